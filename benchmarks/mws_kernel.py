"""Benchmark: numba Mutex Watershed kernel vs mwatershed on the same uint8 affinities.

    python benchmarks/mws_kernel.py                      # 32 x 256 x 256, 3 repeats
    python benchmarks/mws_kernel.py --shape 64,512,512   # larger
    python benchmarks/mws_kernel.py --methods ours,ours_tile,ours_hash,ours_region,mwatershed

Affinities: 12 channels (the paper's 3 attractive + 9 repulsive offsets) derived from a
random Voronoi labelling with one-voxel background boundaries plus noise
(``embedseg_daisy.mws.synthetic``); foreground = labelled voxels.

Every run is a fresh subprocess.  It imports, warms up (numba compile / cache load on a
tiny input), loads the inputs, resets the peak-RSS high-water mark
(``/proc/self/clear_refs``), records its RSS, runs the method once and reports wall and
CPU time and the peak RSS (``VmHWM``).  Reported per method (medians over repeats):

* ``voxels_per_s``: voxels / wall time of the segmentation call;
* ``peak_bytes_per_voxel``: (peak RSS - RSS before the call) / voxels, the method's
  working memory.  The inputs are loaded before the baseline: uint8 affinities + mask
  (13 B/voxel) for ours, the float64 weights mwatershed needs (96 B/voxel) for
  mwatershed, whose conversion from uint8 is timed separately (``prepare_s``);
* ``peak_rss_bytes_per_voxel``: the whole process's peak RSS / voxels (interpreter,
  libraries and inputs included).

``ours_region`` runs region mode on the volume with a context margin of the offsets'
reach (the fragments stage's default); ``ours_region_ctx`` additionally labels only the
region shrunk by ``CONTEXT`` (fewer frozen fragments, see ``test_fragment_counts_report``).
Their voxels/s count the whole array.

Results are printed and written to ``benchmarks/results/mws_kernel.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common as C  # noqa: E402

METHODS = ("ours", "ours_region", "ours_region_ctx", "mwatershed")
ALL_METHODS = ("ours", "ours_tile", "ours_hash", "ours_region", "ours_region_ctx", "mwatershed")
#: extra context of ``ours_region_ctx``: the output box is the region shrunk by this
CONTEXT = (4, 16, 16)


def child(method: str, data: Path, save: bool) -> dict:
    from embedseg_daisy.mws import mutex_watershed, mutex_watershed_region, signed_weights
    from embedseg_daisy.offsets import max_reach

    meta = json.loads((data / "meta.json").read_text())
    offsets = np.asarray(meta["offsets"])
    attractive = np.asarray(meta["attractive"], bool)
    tiebreak = {"ours_tile": "tile", "ours_hash": "hash"}.get(method, "raster")
    prepare_s = 0.0
    extra = {}
    if method == "mwatershed":
        import mwatershed

        affs = np.load(data / "affs.npy")
        fg = np.load(data / "fg.npy")
        t = time.perf_counter()
        weights = signed_weights(affs, offsets, attractive, fg)
        prepare_s = time.perf_counter() - t
        del affs
        offs = offsets.tolist()
        mwatershed.agglom(np.ascontiguousarray(weights[:, :2, :16, :16]), offs)  # warm-up

        def run():
            return mwatershed.agglom(weights, offs)
    else:
        affs = np.load(data / "affs.npy")
        fg = np.load(data / "fg.npy")
        mutex_watershed(affs[:, :4, :16, :16], offsets, attractive, fg[:4, :16, :16], tiebreak=tiebreak)
        if method.startswith("ours_region"):
            reach = max_reach(offsets.tolist())
            inside = tuple(slice(r, s - r) for r, s in zip(reach, fg.shape))
            output = inside
            if method == "ours_region_ctx":
                output = tuple(slice(r + c, s - r - c) for r, c, s in zip(reach, CONTEXT, fg.shape))
            mutex_watershed_region(affs[:, :8, :24, :24], offsets, attractive, fg[:8, :24, :24],
                                   tuple(slice(r, s - r) for r, s in zip(reach, (8, 24, 24))))

            def run():
                res = mutex_watershed_region(affs, offsets, attractive, fg, inside, output=output)
                extra["fragments"] = int(res.ids.size)
                extra["not_final"] = int(res.frozen.sum())
                return res.labels
        else:

            def run():
                return mutex_watershed(affs, offsets, attractive, fg, tiebreak=tiebreak)

    reset = C.reset_peak()
    rss0 = C.status_kib("VmRSS")
    c0 = time.process_time()
    t0 = time.perf_counter()
    labels = run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = C.status_kib("VmHWM")
    if save:
        np.save(data / f"labels_{method}.npy", np.asarray(labels))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "prepare_s": prepare_s,
        "rss_before_kib": rss0,
        "peak_kib": peak,
        "peak_reset": reset,
        **extra,
    }


def vi_nats(a, b, ignore_background=True) -> float:
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if ignore_background:
        m = (a != 0) | (b != 0)
        a, b = a[m], b[m]
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    n = ia.size

    def h(x):
        c = np.unique(x, return_counts=True)[1] / n
        return float(-(c * np.log(c)).sum())

    joint = ia.astype(np.int64) * (int(ib.max()) + 1) + ib
    return 2 * h(joint) - h(ia) - h(ib)


def make_data(shape, seed, noise, data: Path):
    from embedseg_daisy.mws.synthetic import label_affinities, voronoi_labels
    from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE

    offsets = np.array(PAPER_ATTRACTIVE + PAPER_REPULSIVE)
    attractive = np.arange(len(offsets)) < len(PAPER_ATTRACTIVE)
    rng = np.random.default_rng(seed)
    n_objects = max(8, int(np.prod(shape)) // 20000)
    labels = voronoi_labels(shape, n_objects, rng)
    affs = label_affinities(labels, offsets, rng, noise=noise)
    np.save(data / "affs.npy", affs)
    np.save(data / "fg.npy", labels > 0)
    np.save(data / "gt.npy", labels)
    meta = {"offsets": offsets.tolist(), "attractive": attractive.tolist(), "n_objects": n_objects}
    (data / "meta.json").write_text(json.dumps(meta))
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="32,256,256", help="volume shape z,y,x (default 32,256,256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--noise", type=float, default=0.15, help="affinity noise std (default 0.15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {ALL_METHODS}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mws_kernel.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--save", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, Path(args.data), args.save)))
        return

    shape = tuple(int(s) for s in args.shape.split(","))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in ALL_METHODS:
            ap.error(f"unknown method {m}")
    nvox = int(np.prod(shape))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="mws_bench_") as tmp:
        data = Path(tmp)
        t = time.perf_counter()
        meta = make_data(shape, args.seed, args.noise, data)
        print(f"data {shape} ({nvox / 1e6:.2f} Mvox, {meta['n_objects']} objects, noise {args.noise}) "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        runs = {m: [] for m in methods}
        for rep in range(args.repeats):
            for m in methods:  # interleave methods so that load changes hit all of them
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", m, "--data", str(data)]
                if rep == 0:
                    cmd.append("--save")
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{m} failed:\n{out.stderr}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                runs[m].append(r)
                print(f"  {m:12s} rep {rep}: wall {r['wall_s']:.3f} s, cpu {r['cpu_s']:.3f} s, "
                      f"peak +{(r['peak_kib'] - r['rss_before_kib']) * 1024 / nvox:.1f} B/vox, "
                      f"rss {r['peak_kib'] * 1024 / nvox:.1f} B/vox", flush=True)
        gt = np.load(data / "gt.npy")
        labels = {m: np.load(data / f"labels_{m}.npy") for m in methods}

    results = {}
    for m, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        results[m] = {
            "wall_s": [r["wall_s"] for r in rs],
            "cpu_s": [r["cpu_s"] for r in rs],
            "median_wall_s": wall,
            "median_cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "voxels_per_s": nvox / wall,
            "voxels_per_cpu_s": nvox / statistics.median(r["cpu_s"] for r in rs),
            "prepare_s": statistics.median(r["prepare_s"] for r in rs),
            "peak_bytes_per_voxel": statistics.median((r["peak_kib"] - r["rss_before_kib"]) * 1024 / nvox for r in rs),
            "peak_rss_bytes_per_voxel": statistics.median(r["peak_kib"] * 1024 / nvox for r in rs),
            "peak_reset": all(r["peak_reset"] for r in rs),
            "input_bytes_per_voxel": 96.0 if m == "mwatershed" else 13.0,
            "segments": int(np.count_nonzero(np.unique(labels[m]))),
            "vi_vs_ground_truth_nats": vi_nats(labels[m], gt) if labels[m].shape == gt.shape else None,
        }
        if "fragments" in rs[0]:
            results[m]["fragments"] = rs[0]["fragments"]
            results[m]["fragments_not_final"] = rs[0]["not_final"]
        # region-mode labels are fragments of the inside box: no comparison with the global result
        if "mwatershed" in labels and m != "mwatershed" and not m.startswith("ours_region"):
            results[m]["vi_vs_mwatershed_nats"] = vi_nats(labels[m], labels["mwatershed"])
    summary = {}
    if "mwatershed" in results:
        base = results["mwatershed"]
        for m in results:
            if m == "mwatershed":
                continue
            summary[m] = {
                "speedup_wall": results[m]["voxels_per_s"] / base["voxels_per_s"],
                "speedup_cpu": results[m]["voxels_per_cpu_s"] / base["voxels_per_cpu_s"],
                "memory_ratio_working": results[m]["peak_bytes_per_voxel"] / base["peak_bytes_per_voxel"],
                "memory_ratio_working_plus_input": (
                    (results[m]["peak_bytes_per_voxel"] + results[m]["input_bytes_per_voxel"])
                    / (base["peak_bytes_per_voxel"] + base["input_bytes_per_voxel"])
                ),
            }
    report = {
        "shape": list(shape),
        "voxels": nvox,
        "channels": len(meta["offsets"]),
        "noise": args.noise,
        "seed": args.seed,
        "repeats": args.repeats,
        "host": {
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "methods": results,
        "vs_mwatershed": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print()
    print(f"{'method':12s} {'Mvox/s':>8s} {'Mvox/cpu-s':>10s} {'work B/vox':>10s} {'RSS B/vox':>10s} "
          f"{'segments':>8s} {'VI(mws)':>8s}")
    for m, r in results.items():
        print(f"{m:12s} {r['voxels_per_s'] / 1e6:8.3f} {r['voxels_per_cpu_s'] / 1e6:10.3f} "
              f"{r['peak_bytes_per_voxel']:10.1f} {r['peak_rss_bytes_per_voxel']:10.1f} {r['segments']:8d} "
              f"{r.get('vi_vs_mwatershed_nats', float('nan')):8.4f}")
    for m, s in summary.items():
        print(f"{m}: {s['speedup_wall']:.2f}x mwatershed's voxels/s ({s['speedup_cpu']:.2f}x per CPU second), "
              f"working memory {s['memory_ratio_working']:.3f}x "
              f"({s['memory_ratio_working_plus_input']:.3f}x with inputs)")
    print(f"written {out}")


if __name__ == "__main__":
    main()
