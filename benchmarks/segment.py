"""Segmentation stages (fragments -> fragment_edges -> agglomerate -> relabel) through the
real stage code, on oracle affinities, against bare Mutex Watershed kernels.

    python benchmarks/segment.py                                   # 32x384x384, blocks 16x128x128 and 32x256x256
    python benchmarks/segment.py --contexts 4x16x16,8x16x16,16x16x16 --blocks 16x128x128 --methods stages
    python benchmarks/segment.py --shape 64,512,512 --blocks 32x256x256 --repeats 3
    python benchmarks/segment.py --shapes 16,256,256 32,512,512 64,1024,1024 --blocks 32x256x256 --repeats 1

Data: synthetic ground truth (``embedseg_daisy.synth``; ``--kind voronoi`` for a cheap
Voronoi partition), affinities on the paper's 12 offsets and a background mask derived
from it with noise (``label_affinities``, as in ``tests/pipeline_helpers.py``), stored as
zarr like the predict stage writes them (uint8, chunks 16x128x128), cached in
``benchmarks/work/data``.

Methods, each in a fresh process (imports and numba caches loaded before timing):

* ``stages`` -- the four stages, each stage in its own process running all of its blocks
  serially exactly as one daisy worker does (``build_stage``, ``setup``, the worker
  loop's store calls, ``process``); zarr reads/writes and SQLite store traffic included.
  Reported per stage and in total: CPU seconds, voxels per CPU second (= per core),
  and the worker's peak RSS (``VmHWM``; ``peak_over_setup``: beyond its imports and setup).
* ``ours_whole`` -- our bare kernel (``mutex_watershed``) on the whole in-memory volume.
* ``ours_region_blocks`` -- our kernel in region mode per block, as the fragments stage
  calls it (block + context, in memory, no I/O): the kernel share of the fragments stage.
* ``mwatershed_whole`` -- ``mwatershed.agglom`` on the whole volume (float64 signed
  weights, the conversion from uint8 timed separately as ``prepare_s``); skipped when
  its ~870 B/voxel would not fit (``--mwatershed-max-vox``).
* ``mwatershed_blocks`` -- ``mwatershed.agglom`` per block with the same context.

Correctness: the blockwise segmentation must equal ``ours_whole`` voxel for voxel
(checked on the first repeat), and VI against ground truth and against mwatershed is
reported.  Results: ``benchmarks/results/segment.json`` and a line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STAGES = ["fragments", "fragment_edges", "agglomerate", "relabel"]
KERNELS = ["ours_whole", "ours_region_blocks", "mwatershed_whole", "mwatershed_blocks"]


# ------------------------------------------------------------------------ children
def kernel_child(method: str, data: Path, block, save: Path | None, ctx_extra=(4, 16, 16)) -> dict:
    from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE

    offsets = list(PAPER_ATTRACTIVE) + list(PAPER_REPULSIVE)
    attractive = [True] * len(PAPER_ATTRACTIVE) + [False] * len(PAPER_REPULSIVE)
    affs, fg = C.load_oracle_arrays(data)
    shape = fg.shape
    ctx_extra = np.asarray(ctx_extra)  # segment.context_vox (default (4, 16, 16))
    reach = C.reach(offsets)
    prepare_s = 0.0
    labels = None
    if method.startswith("mwatershed"):
        import mwatershed

        from embedseg_daisy.mws import signed_weights

        offs = [list(map(int, o)) for o in offsets]
        mwatershed.agglom(np.ascontiguousarray(signed_weights(affs[:, :2, :16, :16], offsets, attractive, fg[:2, :16, :16])), offs)
        if method == "mwatershed_whole":
            t = time.perf_counter()
            w = signed_weights(affs, offsets, attractive, fg)
            prepare_s = time.perf_counter() - t
            del affs

            def run():
                return np.asarray(mwatershed.agglom(w, offs))
        else:
            ws = []
            for sl in _block_slices(shape, block, ctx_extra + np.asarray(reach)):
                t = time.perf_counter()
                ws.append(signed_weights(affs[(slice(None),) + sl], offsets, attractive, fg[sl]))
                prepare_s += time.perf_counter() - t

            def run():
                for w in ws:
                    mwatershed.agglom(w, offs)
    else:
        from embedseg_daisy.mws import mutex_watershed, mutex_watershed_region

        mutex_watershed(affs[:, :4, :16, :16], offsets, attractive, fg[:4, :16, :16])
        if method == "ours_whole":
            def run():
                return mutex_watershed(affs, offsets, attractive, fg)
        else:
            ctx = tuple(e + r for e, r in zip(ctx_extra, reach))
            jobs = []
            for bz in range(0, shape[0], block[0]):
                for by in range(0, shape[1], block[1]):
                    for bx in range(0, shape[2], block[2]):
                        b0 = np.array([bz, by, bx])
                        b1 = np.minimum(b0 + block, shape)
                        r0, r1 = np.maximum(b0 - ctx, 0), np.minimum(b1 + ctx, shape)
                        g0, g1 = np.maximum(b0 - ctx_extra, 0), np.minimum(b1 + ctx_extra, shape)
                        read = tuple(slice(int(a), int(b)) for a, b in zip(r0, r1))
                        region = tuple(slice(int(a - r), int(b - r)) for a, b, r in zip(g0, g1, r0))
                        out = tuple(slice(int(a - r), int(b - r)) for a, b, r in zip(b0, b1, r0))
                        jobs.append((read, region, out, tuple(int(v) for v in r0)))

            def run():
                for read, region, out, origin in jobs:
                    mutex_watershed_region(affs[(slice(None),) + read], offsets, attractive, fg[read], region,
                                           origin, shape, output=out)
    reset = C.reset_peak()
    rss0 = C.status_kib("VmRSS")
    c0, t0 = time.process_time(), time.perf_counter()
    labels = run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = C.status_kib("VmHWM")
    if save is not None and labels is not None:
        np.save(save, labels)
    return {"wall_s": wall, "cpu_s": cpu, "prepare_s": prepare_s, "rss_before_mib": rss0 / 1024,
            "peak_rss_mib": peak / 1024, "working_mib": (peak - rss0) / 1024, "peak_reset": reset}


def _block_slices(shape, block, ctx):
    for bz in range(0, shape[0], block[0]):
        for by in range(0, shape[1], block[1]):
            for bx in range(0, shape[2], block[2]):
                b0 = np.array([bz, by, bx])
                b1 = np.minimum(b0 + block, shape)
                r0, r1 = np.maximum(b0 - ctx, 0), np.minimum(b1 + ctx, shape)
                yield tuple(slice(int(a), int(b)) for a, b in zip(r0, r1))


# ------------------------------------------------------------------------- driver
def run_stages(data: Path, shape, block, rep: int, fanout, context) -> tuple[dict, Path]:
    tag = f"{'x'.join(map(str, shape))}-b{'x'.join(map(str, block))}-c{'x'.join(map(str, context))}"
    run_dir = C.WORK / "segment" / tag
    config = C.run_config(data, run_dir, f"seg-{tag}".replace("x", "_"), block=block, stages=STAGES, fanout=fanout,
                          extra={"segment.context_vox": list(context)})
    out = {}
    for sid in C.stage_ids(config, STAGES):
        out[sid] = C.child([__file__, "--child-stage", sid, "--config", config])
    return out, config


def summarize_stages(runs: list[dict], nvox: int) -> dict:
    """Medians over repeats per stage, and the whole segmentation."""
    sids = list(runs[0])
    per = {}
    for sid in sids:
        rs = [r[sid] for r in runs]
        cpu = C.median([r["cpu_s"] for r in rs])
        per[sid] = {
            "blocks": rs[0]["blocks"],
            "cpu_s": cpu,
            "wall_s": C.median([r["wall_s"] for r in rs]),
            "voxels_per_cpu_s": nvox / cpu if cpu else None,
            "peak_rss_mib": C.median([r["peak_rss_mib"] for r in rs]),
            "rss_after_setup_mib": C.median([r["rss_after_setup_mib"] for r in rs]),
            "peak_over_setup_mib": C.median([r["peak_rss_mib"] - r["rss_after_setup_mib"] for r in rs]),
            "peak_block_over_rss_mib": C.median([r["peak_block_over_rss_mib"] for r in rs]),
            "block_wall_s_median": C.median([r["block_wall_s_median"] for r in rs]),
        }
    totals = [sum(r[s]["cpu_s"] for s in sids) for r in runs]
    tot = C.median(totals)
    return {
        "per_stage": per,
        "total_cpu_s": tot,
        "total_cpu_s_runs": totals,
        "voxels_per_cpu_s": nvox / tot,
        "peak_worker_rss_mib": max(p["peak_rss_mib"] for p in per.values()),
        "peak_worker_over_setup_mib": max(p["peak_over_setup_mib"] for p in per.values()),
        "peak_worker_over_setup_bytes_per_block_voxel": None,
    }


def bench_shape(args, shape, blocks) -> dict:
    nvox = int(np.prod(shape))
    data = C.oracle_data(shape, seed=args.seed, noise=args.noise, kind=args.kind, affinities=args.affinities)
    meta = json.loads((data / "meta.json").read_text())
    result = {"shape": list(shape), "voxels": nvox, "objects": meta["objects"], "blocks": {}}
    methods = [m for m in args.methods.split(",") if m]
    labels_dir = C.WORK / "segment" / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    whole = {}
    for m in ("ours_whole", "mwatershed_whole"):
        if m not in methods:
            continue
        if m == "mwatershed_whole" and nvox > args.mwatershed_max_vox:
            whole[m] = {"skipped": f"{nvox} voxels > --mwatershed-max-vox {args.mwatershed_max_vox} "
                                   f"(~870 B/voxel would need {870 * nvox / 2**30:.1f} GiB)"}
            continue
        if m == "ours_whole" and nvox > args.ours_whole_max_vox:
            whole[m] = {"skipped": f"{nvox} voxels > --ours-whole-max-vox"}
            continue
        rs = []
        for rep in range(args.repeats):
            save = labels_dir / f"{m}.npy" if rep == 0 else None
            rs.append(C.child([__file__, "--child-kernel", m, "--data", data, "--block", "1,1,1",
                               *(["--save", save] if save else [])]))
            print(f"  {m:20s} rep {rep}: cpu {rs[-1]['cpu_s']:.2f} s, working {rs[-1]['working_mib']:.0f} MiB", flush=True)
        whole[m] = _kernel_summary(rs, nvox)
    result["whole_volume"] = whole
    gt = None
    for block, context in [(b_, c_) for b_ in blocks for c_ in args.contexts]:
        b = {"block": list(block), "context": list(context)}
        runs = []
        config = None
        for rep in range(args.repeats):
            r, config = run_stages(data, shape, block, rep, args.fanout, context)
            runs.append(r)
            print(f"  stages {block} rep {rep}: " + ", ".join(f"{k} {v['cpu_s']:.2f}s/{v['peak_rss_mib']:.0f}MiB" for k, v in r.items()), flush=True)
            if rep == 0:
                from embedseg_daisy.volumes import open_volume

                seg_v = open_volume(str(config.parent / "output.zarr"), "segmentation")
                seg = seg_v.read(seg_v.roi)
                if gt is None:
                    gv = open_volume(str(data / "input.zarr"), "labels")
                    gt = gv.read(gv.roi)
                check = {"vi_vs_ground_truth_nats": C.vi_nats(gt, seg)}
                ow = labels_dir / "ours_whole.npy"
                if ow.exists() and "skipped" not in whole.get("ours_whole", {"skipped": 1}):
                    check["equals_whole_volume_mws"] = bool(np.array_equal(seg, np.load(ow)))
                mw = labels_dir / "mwatershed_whole.npy"
                if mw.exists() and "skipped" not in whole.get("mwatershed_whole", {"skipped": 1}):
                    ref = np.load(mw).astype(np.uint64)
                    ref[seg == 0] = 0
                    check["vi_vs_mwatershed_whole_nats"] = C.vi_nats(ref, seg)
                b["check"] = check
                b["store"] = C.store_report(config)
                frag = b["store"].get("fragments", {}).get("rows", 0)
                b["fragments"] = frag
                b["store_bytes_per_voxel"] = sum(v["bytes"] for v in b["store"].values()) / nvox
                print(f"  check: {check}", flush=True)
        b["stages"] = summarize_stages(runs, nvox)
        vox_block = int(np.prod(block))
        b["stages"]["peak_worker_over_setup_bytes_per_block_voxel"] = b["stages"]["peak_worker_over_setup_mib"] * 2**20 / vox_block
        for m in ("ours_region_blocks", "mwatershed_blocks"):
            if m not in methods:
                continue
            rs = []
            for rep in range(args.repeats):
                rs.append(C.child([__file__, "--child-kernel", m, "--data", data, "--block", ",".join(map(str, block)),
                                   "--context", ",".join(map(str, context))]))
                print(f"  {m:20s} {block} rep {rep}: cpu {rs[-1]['cpu_s']:.2f} s, working {rs[-1]['working_mib']:.0f} MiB", flush=True)
            b[m] = _kernel_summary(rs, nvox)
        # ratios measured in this run
        st = b["stages"]
        ratios = {}
        for m, src in (("mwatershed_whole", whole), ("ours_whole", whole), ("mwatershed_blocks", b), ("ours_region_blocks", b)):
            if m in src and "cpu_s" in src[m]:
                ratios[f"stages_cpu_over_{m}"] = st["total_cpu_s"] / src[m]["cpu_s"]
        if "mwatershed_whole" in whole and "cpu_s" in whole["mwatershed_whole"]:
            w = whole["mwatershed_whole"]
            ratios["stages_cpu_over_mwatershed_whole_incl_conversion"] = st["total_cpu_s"] / (w["cpu_s"] + w["prepare_s"])
            ratios["stages_peak_worker_over_mwatershed_whole_peak"] = st["peak_worker_rss_mib"] / w["peak_rss_mib"]
        b["ratios"] = ratios
        key = "x".join(map(str, block)) + ("" if len(args.contexts) == 1 else "/ctx" + "x".join(map(str, context)))
        result["blocks"][key] = b
    return result


def _kernel_summary(rs, nvox) -> dict:
    cpu = C.median([r["cpu_s"] for r in rs])
    return {
        "cpu_s": cpu,
        "wall_s": C.median([r["wall_s"] for r in rs]),
        "cpu_s_runs": [r["cpu_s"] for r in rs],
        "prepare_s": C.median([r["prepare_s"] for r in rs]),
        "voxels_per_cpu_s": nvox / cpu,
        "working_mib": C.median([r["working_mib"] for r in rs]),
        "working_bytes_per_voxel": C.median([r["working_mib"] for r in rs]) * 2**20 / nvox,
        "peak_rss_mib": C.median([r["peak_rss_mib"] for r in rs]),
    }


def parse_shape(s: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in s.replace("x", ",").split(","))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="32,384,384")
    ap.add_argument("--shapes", nargs="*", help="several volume shapes (scaling); overrides --shape")
    ap.add_argument("--blocks", default="16x128x128,32x256x256", help="comma list of block shapes ZxYxX")
    ap.add_argument("--fanout", default="2,2,2")
    ap.add_argument("--contexts", default="4x16x16", help="comma list of segment.context_vox values to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--kind", choices=["synth", "voronoi"], default="synth", help="ground truth generator")
    ap.add_argument("--affinities", choices=["embedding", "label"], default="embedding",
                    help="embedding: Eq. 6 on synthetic embeddings with smooth noise (network-like); "
                         "label: independent noise per edge (the pipeline tests' recipe, a stress case)")
    ap.add_argument("--methods", default=",".join(["stages"] + KERNELS))
    ap.add_argument("--mwatershed-max-vox", type=int, default=12_000_000)
    ap.add_argument("--ours-whole-max-vox", type=int, default=150_000_000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child-stage")
    ap.add_argument("--child-kernel")
    ap.add_argument("--config")
    ap.add_argument("--data")
    ap.add_argument("--block")
    ap.add_argument("--save")
    ap.add_argument("--context", default="4,16,16")
    args = ap.parse_args(argv)

    if args.child_stage:
        print(json.dumps(C.run_stage_serial(Path(args.config), args.child_stage)))
        return
    if args.child_kernel:
        print(json.dumps(kernel_child(args.child_kernel, Path(args.data), np.array(parse_shape(args.block)),
                                      Path(args.save) if args.save else None, parse_shape(args.context))))
        return

    args.fanout = parse_shape(args.fanout)
    args.contexts = [parse_shape(c) for c in args.contexts.split(",")]
    shapes = [parse_shape(s) for s in (args.shapes or [args.shape])]
    blocks = [parse_shape(b) for b in args.blocks.split(",")]
    report = {"benchmark": "segmentation stages vs bare MWS kernels", "command": C.command_line(),
              "machine": C.machine(), "repeats": args.repeats, "noise": args.noise, "kind": args.kind,
              "affinities": args.affinities,
              "fanout": list(args.fanout), "volumes": []}
    for shape in shapes:
        print(f"volume {shape} ({np.prod(shape) / 1e6:.2f} Mvox)", flush=True)
        report["volumes"].append(bench_shape(args, shape, blocks))
    report["loadavg_end"] = [round(v, 2) for v in __import__("os").getloadavg()]
    lines, head = [], []
    for vol in report["volumes"]:
        nv = vol["voxels"]
        for bkey, b in vol["blocks"].items():
            st = b["stages"]
            line = (f"{vol['shape']} block {bkey}: stages {st['voxels_per_cpu_s'] / 1e6:.3f} Mvox/core-s, "
                    f"peak worker {st['peak_worker_rss_mib']:.0f} MiB "
                    f"(+{st['peak_worker_over_setup_mib']:.0f} over setup); "
                    + ", ".join(f"{k.replace('stages_cpu_over_', 'x')} {v:.2f}" for k, v in b["ratios"].items()
                                if k.startswith("stages_cpu_over_") and "incl" not in k))
            lines.append(line)
            per = ", ".join(f"{k} {v['voxels_per_cpu_s'] / 1e6:.2f}" for k, v in st["per_stage"].items())
            lines.append(f"    per stage Mvox/core-s: {per}")
            if "check" in b:
                lines.append(f"    check {b['check']}")
                lines.append(f"    {b['fragments']} fragments, store {b['store_bytes_per_voxel']:.1f} B/voxel")
        for m, w in vol["whole_volume"].items():
            if "cpu_s" in w:
                lines.append(f"    {m}: {w['voxels_per_cpu_s'] / 1e6:.3f} Mvox/core-s, working {w['working_bytes_per_voxel']:.0f} B/vox")
            else:
                lines.append(f"    {m}: {w['skipped']}")
        b0 = list(vol["blocks"].values())[-1]
        mw = b0["ratios"].get("stages_cpu_over_mwatershed_whole")
        head.append(f"{nv / 1e6:.1f} Mvox, block {list(vol['blocks'])[-1]}: {b0['stages']['voxels_per_cpu_s'] / 1e6:.2f} Mvox/core-s, "
                    f"peak worker {b0['stages']['peak_worker_rss_mib']:.0f} MiB"
                    + (f", {mw:.2f}x mwatershed's CPU" if mw else ""))
    print("\n".join(lines))
    C.save("segment", report, "; ".join(head), out=args.out)


if __name__ == "__main__":
    main()
