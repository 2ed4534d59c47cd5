"""Peer comparison: volara 1.0.5 (mwatershed per block + mean-affinity graph MWS) vs our
exact blockwise MWS, on the same affinities.

    python benchmarks/peer_volara.py                                  # 32x384x384, blocks 16x128x128
    python benchmarks/peer_volara.py --shape 32,512,512 --block 32x256x256 --workers 2

volara pins ``daisy < 2``, so it runs in its own virtual environment,
``benchmarks/work/volara-venv`` (created on first use: ``python -m venv`` +
``pip install volara==1.0.5``), in a child process of this script.

Both sides get the same uint8 affinities (12 channels: the paper's 3 attractive + 9
repulsive offsets, oracle affinities from ``benchmarks/segment.py``'s generator) and the
same foreground restriction.  volara's ``ExtractFrags`` hands ``affinities + bias`` to
``mwatershed.agglom`` (sign = edge type, magnitude = priority), so ``bias = 0`` on the
attractive and ``-1`` on the repulsive channels gives exactly the paper's semantics
(``+a`` / ``-(1 - a)``); the foreground restriction is baked into its input (attractive
edges with a background end get ``a = 0``, repulsive ones ``a = 1``, i.e. weight 0: the
same removed edges ``signed_weights`` makes).  Pipelines, block size, context (the
offsets' reach + (4, 16, 16), our default) and worker count are the same:

* ours: ``fragments -> fragment_edges -> agglomerate (all levels) -> relabel`` through
  ``python -m embedseg_daisy.run`` (daisy 2, SQLite store);
* volara: ``ExtractFrags -> AffAgglom -> GraphMWS -> Relabel`` (daisy 1, its SQLite
  graph database), scores ``adj`` = mean affinity over the 3 nearest-neighbour offsets and
  ``lr`` = over the 9 others, GraphMWS weights ``adj: (1, 0)``, ``lr: (1, -1)`` (the same
  sign convention on the fragment graph), as in volara's README pipeline.

Measured: core-seconds of the whole process tree (``RUSAGE_CHILDREN``) per voxel, wall
time, the peak RSS of the largest worker process (sampled ``VmHWM``; volara's workers
are forked, so their RSS includes pages shared with the driver), and consistency: each
method's VI (nats) between its blockwise result and its own single-block result (block =
the whole volume), plus VI against ground truth.  Goal: ours <= 0.5x volara's
core-seconds with equal or better consistency.  Results: ``benchmarks/results/peer_volara.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

VENV = C.WORK / "volara-venv"
VOLARA = "volara==1.0.5"


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import volara"], capture_output=True).returncode == 0
    if not ok:
        print(f"creating {VENV} with {VOLARA} (once)", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", VOLARA], check=True)
    return py


def offsets_and_mask():
    from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE

    offsets = [tuple(int(v) for v in o) for o in list(PAPER_ATTRACTIVE) + list(PAPER_REPULSIVE)]
    return offsets, [True] * len(PAPER_ATTRACTIVE) + [False] * len(PAPER_REPULSIVE)


def volara_input(data: Path, out: Path) -> Path:
    """The oracle affinities with the foreground restriction baked in (uint8)."""
    from funlib.geometry import Roi

    from embedseg_daisy.volumes import prepare_volume

    path = out / "volara_in.zarr"
    if (out / "volara_in.done").exists():
        return path
    offsets, attractive = offsets_and_mask()
    affs, fg = C.load_oracle_arrays(data)
    shape = fg.shape
    for k, off in enumerate(offsets):
        partner = np.ones(shape, bool)
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        partner[src] = fg[dst]
        removed = ~(fg & partner)
        affs[k][removed] = 0 if attractive[k] else 255
    meta = json.loads((data / "meta.json").read_text())
    v = prepare_volume(str(path), "affinities", roi=Roi((0, 0, 0), shape), voxel_size=C.VOXEL_SIZE, dtype=np.uint8,
                       chunk_shape=tuple(meta["chunk"]), channels=len(offsets), attrs={"offsets": [list(o) for o in offsets]})
    v.write(Roi((0, 0, 0), shape), affs)
    (out / "volara_in.done").write_text("")
    return path


# ------------------------------------------------------------------ volara side
def volara_child(inp: Path, out: Path, block, context, workers: int, offsets) -> dict:
    """Runs in the volara venv: the README pipeline, one daisy 1 run per task."""
    from funlib.geometry import Coordinate
    from funlib.persistence import open_ds
    from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
    from volara.datasets import Affs, Labels
    from volara.dbs import SQLite
    from volara.lut import LUT

    out.mkdir(parents=True, exist_ok=True)
    nbh = [list(o) for o in offsets]
    affs = Affs(store=inp / "affinities", neighborhood=nbh)
    db = SQLite(path=out / "db.sqlite", edge_attrs={"adj_weight": "float", "lr_weight": "float"})
    frags = Labels(store=out / "volara.zarr" / "fragments")
    lut = LUT(path=out / "lut.npz")
    roi = open_ds(inp / "affinities").roi
    block, context = Coordinate(block), Coordinate(context)
    tasks = [
        ("extract_frags", ExtractFrags(db=db, affs_data=affs, frags_data=frags, block_size=block, context=context,
                                       bias=[0.0] * 3 + [-1.0] * (len(nbh) - 3), num_workers=workers)),
        ("aff_agglom", AffAgglom(db=db, affs_data=affs, frags_data=frags, block_size=block, context=context,
                                 scores={"adj_weight": nbh[:3], "lr_weight": nbh[3:]}, num_workers=workers)),
        ("graph_mws", GraphMWS(db=db, lut=lut, weights={"adj_weight": (1.0, 0.0), "lr_weight": (1.0, -1.0)},
                               roi=[roi.get_begin(), roi.get_shape()])),
        ("relabel", Relabel(frags_data=frags, seg_data=Labels(store=out / "volara.zarr" / "segments"), lut=lut,
                            block_size=block, num_workers=workers)),
    ]
    res = {}
    for name, task in tasks:
        s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with C.TreeSampler(os.getpid(), 0.1) as sampler:
            task.run_blockwise(multiprocessing=True)
        wall = time.perf_counter() - t0
        s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        kids = [p for pid, p in sampler.procs.items() if pid != os.getpid()]
        res[name] = {
            "wall_s": wall,
            "cpu_s": (s1.ru_utime - s0.ru_utime + s1.ru_stime - s0.ru_stime) + (c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime),
            "peak_worker_rss_mib": max((p["peak_kib"] for p in kids), default=0) / 1024,
            "driver_peak_rss_mib": C.status_kib("VmHWM") / 1024,
            "worker_processes": len(kids),
        }
    return res


def run_volara(py: Path, inp: Path, out: Path, block, context, workers: int) -> dict:
    import shutil

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)  # volara keeps its block-done arrays in ./volara_logs: run it in `out`
    offsets, _ = offsets_and_mask()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [str(py), __file__, "--volara-child", "--inp", str(inp), "--outdir", str(out),
           "--block", "x".join(map(str, block)), "--context", "x".join(map(str, context)), "--workers", str(workers),
           "--offsets", json.dumps(offsets)]
    env = dict(os.environ, PYTHONPATH=str(C.BENCH))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=out, env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"volara failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    tasks = json.loads(p.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "tasks": tasks, "peak_worker_rss_mib": max(t["peak_worker_rss_mib"] for t in tasks.values()),
            "segmentation": str(out / "volara.zarr" / "segments")}


def run_ours(data: Path, run_dir: Path, block, workers: int) -> dict:
    stages = ["fragments", "fragment_edges", "agglomerate", "relabel"]
    config = C.run_config(data, run_dir, "peer-ours", block=block, stages=stages, workers=workers)
    r = C.run_pipeline(config)
    r["peak_worker_rss_mib"] = max(t["peak_worker_rss_mib"] for t in r["tasks"].values())
    r["segmentation"] = str(run_dir / "output.zarr" / "segmentation")
    return r


def read_seg(path: str) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(path, mode="r")[...])


def summarize(runs: list[dict], nvox: int) -> dict:
    cpu = C.median([r["cpu_s"] for r in runs])
    return {"cpu_s": cpu, "cpu_s_runs": [r["cpu_s"] for r in runs], "wall_s": C.median([r["wall_s"] for r in runs]),
            "core_seconds_per_mvox": cpu / nvox * 1e6, "voxels_per_core_s": nvox / cpu,
            "peak_worker_rss_mib": C.median([r["peak_worker_rss_mib"] for r in runs]),
            "tasks": runs[len(runs) // 2]["tasks"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="32,384,384")
    ap.add_argument("--block", default="16x128x128")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--affinities", choices=["embedding", "label"], default="embedding")
    ap.add_argument("--no-single-block", action="store_true", help="skip the single-block references")
    ap.add_argument("--out", default=None)
    ap.add_argument("--volara-child", action="store_true")
    ap.add_argument("--inp")
    ap.add_argument("--outdir")
    ap.add_argument("--context")
    ap.add_argument("--offsets")
    args = ap.parse_args(argv)
    if args.volara_child:
        res = volara_child(Path(args.inp), Path(args.outdir), tuple(int(v) for v in args.block.split("x")),
                           tuple(int(v) for v in args.context.split("x")), args.workers,
                           [tuple(o) for o in json.loads(args.offsets)])
        print(json.dumps(res))
        return

    py = ensure_venv()
    shape = tuple(int(v) for v in args.shape.split(","))
    nvox = int(np.prod(shape))
    block = tuple(int(v) for v in args.block.split("x"))
    offsets, _ = offsets_and_mask()
    reach = C.reach(offsets)
    context = tuple(r + c for r, c in zip(reach, (4, 16, 16)))
    data = C.oracle_data(shape, seed=args.seed, affinities=args.affinities)
    work = C.WORK / "peer" / f"{'x'.join(map(str, shape))}-{args.affinities}"
    work.mkdir(parents=True, exist_ok=True)
    inp = volara_input(data, work)
    ours, theirs = [], []
    for rep in range(args.repeats):  # interleaved: load changes hit both
        ours.append(run_ours(data, work / "ours", block, args.workers))
        print(f"  ours   rep {rep}: {ours[-1]['cpu_s']:.1f} core-s, wall {ours[-1]['wall_s']:.1f} s, "
              f"peak worker {ours[-1]['peak_worker_rss_mib']:.0f} MiB", flush=True)
        theirs.append(run_volara(py, inp, work / "volara", block, context, args.workers))
        print(f"  volara rep {rep}: {theirs[-1]['cpu_s']:.1f} core-s, wall {theirs[-1]['wall_s']:.1f} s, "
              f"peak worker {theirs[-1]['peak_worker_rss_mib']:.0f} MiB "
              + ", ".join(f"{k} {v['cpu_s']:.1f}s" for k, v in theirs[-1]["tasks"].items()), flush=True)
    from embedseg_daisy.volumes import open_volume

    gt_v = open_volume(str(data / "input.zarr"), "labels")
    gt = gt_v.read(gt_v.roi)
    seg_ours = read_seg(ours[-1]["segmentation"])
    seg_vol = read_seg(theirs[-1]["segmentation"])
    consistency = {"ours_vs_ground_truth": C.vi_nats(gt, seg_ours), "volara_vs_ground_truth": C.vi_nats(gt, seg_vol)}
    single = {}
    if not args.no_single_block:
        so = run_ours(data, work / "ours_single", shape, args.workers)
        sv = run_volara(py, inp, work / "volara_single", shape, context, args.workers)
        single = {"ours": {k: so[k] for k in ("cpu_s", "wall_s", "peak_worker_rss_mib")},
                  "volara": {k: sv[k] for k in ("cpu_s", "wall_s", "peak_worker_rss_mib")}}
        ref_o, ref_v = read_seg(so["segmentation"]), read_seg(sv["segmentation"])
        consistency["ours_blockwise_vs_single_block"] = C.vi_nats(ref_o, seg_ours)
        consistency["ours_blockwise_equals_single_block"] = bool(np.array_equal(ref_o, seg_ours))
        consistency["volara_blockwise_vs_single_block"] = C.vi_nats(ref_v, seg_vol)
        consistency["volara_single_block_vs_ground_truth"] = C.vi_nats(gt, ref_v)
    so_, sv_ = summarize(ours, nvox), summarize(theirs, nvox)
    ratio = so_["cpu_s"] / sv_["cpu_s"]
    report = {
        "benchmark": "peer comparison: volara 1.0.5 vs ours", "command": C.command_line(), "machine": C.machine(),
        "shape": list(shape), "voxels": nvox, "block": list(block), "context": list(context), "workers": args.workers,
        "repeats": args.repeats, "affinities": args.affinities, "volara": VOLARA,
        "ours": so_, "volara_results": sv_, "single_block": single, "consistency_vi_nats": consistency,
        "ratio_core_seconds_ours_over_volara": ratio,
        "ratio_peak_worker_rss_ours_over_volara": so_["peak_worker_rss_mib"] / sv_["peak_worker_rss_mib"],
        "goal": "ours <= 0.5x volara's core-seconds with equal or better consistency",
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }
    cons_o = consistency.get("ours_blockwise_vs_single_block", {}).get("total")
    cons_v = consistency.get("volara_blockwise_vs_single_block", {}).get("total")
    report["goal_met"] = bool(ratio <= 0.5 and (cons_o is None or cons_v is None or cons_o <= cons_v))
    head = (f"{nvox / 1e6:.1f} Mvox, block {args.block}, {args.workers} worker(s): ours {so_['core_seconds_per_mvox']:.2f} "
            f"core-s/Mvox, peak worker {so_['peak_worker_rss_mib']:.0f} MiB; volara {sv_['core_seconds_per_mvox']:.2f} "
            f"core-s/Mvox, {sv_['peak_worker_rss_mib']:.0f} MiB; ratio {ratio:.2f} (goal <= 0.5, "
            f"{'met' if report['goal_met'] else 'missed'}); VI blockwise vs single block: ours "
            f"{cons_o if cons_o is None else round(cons_o, 4)}, volara {cons_v if cons_v is None else round(cons_v, 4)}; "
            f"VI vs GT ours {consistency['ours_vs_ground_truth']['total']:.3f}, volara {consistency['volara_vs_ground_truth']['total']:.3f}")
    print(head)
    C.save("peer_volara", report, head, out=args.out)


if __name__ == "__main__":
    main()
