"""Scaling: run time per voxel and peak worker memory from 10^6 to 10^8 voxels at a fixed
block size, through ``python -m embedseg_daisy.run``.

    python benchmarks/scaling.py                                     # 1.0, 8.4, 28 Mvox
    python benchmarks/scaling.py --shapes 16,256,256 32,512,512 48,768,768 96,1024,1024 --repeats 1

Stages: fragments, fragment_edges, agglomerate (all levels), relabel, contacts,
candidates -- on oracle affinities (``benchmarks/segment.py``'s generator), because the
embedding net runs at ~25-50 kvox/s on this CPU (``benchmarks/predict.py``): 10^8 voxels
would take the net about a day here, while predict's cost per voxel is a constant per
patch anyway (its blocks are independent).  Block 16x128x128 (segment and contacts),
fanout 2, SQLite store, 2 workers per stage.

Per volume: wall time, CPU of the whole process tree, both per voxel; per daisy task the
peak RSS of its largest worker process (sampled ``VmHWM``) and of the driver.  Flat time
per voxel (within +-20 % of the largest volume's) and constant worker memory are the
goals.  A PNG plot goes to ``benchmarks/results/scaling.png``.  Results:
``benchmarks/results/scaling.json`` and a line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STAGES = ["fragments", "fragment_edges", "agglomerate", "relabel", "contacts", "candidates"]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vols = report["volumes"]
    n = np.array([v["voxels"] for v in vols], float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(n, [v["wall_us_per_voxel"] for v in vols], "o-", label="wall (2 workers)")
    a.plot(n, [v["cpu_us_per_voxel"] for v in vols], "s-", label="CPU, whole process tree")
    a.set_xscale("log")
    a.set_xlabel("voxels")
    a.set_ylabel("microseconds per voxel")
    a.set_ylim(bottom=0)
    a.set_title("time per voxel (flat = linear scaling)")
    a.legend()
    a.grid(alpha=0.3)
    tasks = sorted({t for v in vols for t in v["peak_worker_rss_mib"]})
    groups: dict[str, list] = {}
    for t in tasks:
        base = "agglomerate (max over levels)" if t.startswith("agglomerate") else t
        groups.setdefault(base, []).append(t)
    for base, ts in groups.items():
        b.plot(n, [max(v["peak_worker_rss_mib"].get(t, np.nan) for t in ts) for v in vols], "o-", label=base)
    b.plot(n, [v["driver_peak_rss_mib"] for v in vols], "k--", label="driver (scheduler)")
    b.set_xscale("log")
    b.set_xlabel("voxels")
    b.set_ylabel("peak RSS, MiB")
    b.set_ylim(bottom=0)
    b.set_title(f"peak worker memory, block {report['block']}")
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=["16,256,256", "32,512,512", "48,768,768"])
    ap.add_argument("--block", default="16x128x128")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kind", choices=["synth", "voronoi"], default="synth")
    ap.add_argument("--affinities", choices=["embedding", "label"], default="embedding")
    ap.add_argument("--exact-region-vox", default="default",
                    help="agglomerate.exact_region_vox: an integer, 'none' (exact at every level) or "
                         "'default' (the config default)")
    ap.add_argument("--last-level-tile-blocks", default=None,
                    help="agglomerate.last_level_tile_blocks as Z,Y,X (default: one last region)")
    ap.add_argument("--keep", action="store_true", help="keep each run's output (default: delete after measuring)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    block = tuple(int(v) for v in args.block.split("x"))
    extra = {"contacts.shards": 4}
    if args.exact_region_vox != "default":
        extra["agglomerate.exact_region_vox"] = None if args.exact_region_vox == "none" else int(args.exact_region_vox)
    if args.last_level_tile_blocks:
        extra["agglomerate.last_level_tile_blocks"] = [int(v) for v in args.last_level_tile_blocks.split(",")]
    report = {"exact_region_vox": extra.get("agglomerate.exact_region_vox", "default"),
              "last_level_tile_blocks": extra.get("agglomerate.last_level_tile_blocks"), "benchmark": "scaling 10^6..10^8 voxels", "command": C.command_line(), "machine": C.machine(),
              "block": list(block), "workers": args.workers, "repeats": args.repeats, "stages": STAGES,
              "affinities": args.affinities, "kind": args.kind, "volumes": []}
    for s in args.shapes:
        shape = tuple(int(v) for v in s.split(","))
        nvox = int(np.prod(shape))
        data = C.oracle_data(shape, seed=args.seed, kind=args.kind, affinities=args.affinities)
        runs = []
        for rep in range(args.repeats):
            run_dir = C.WORK / "scaling" / f"{'x'.join(map(str, shape))}"
            config = C.run_config(data, run_dir, f"scaling-{rep}", block=block, stages=STAGES, workers=args.workers,
                                  extra=extra)
            r = C.run_pipeline(config, interval_s=0.5)
            r["blocks"] = C.block_records(config, r["started_epoch"])
            r["rows"] = C.store_report(config)
            r["store_bytes"] = sum(p.stat().st_size for p in run_dir.glob("output.zarr.store.sqlite*"))
            runs.append(r)
            print(f"  {shape} rep {rep}: wall {r['wall_s']:.1f} s ({1e6 * r['wall_s'] / nvox:.2f} us/vox), "
                  f"cpu {r['cpu_s']:.1f} s, worker peaks " + ", ".join(
                      f"{k} {v['peak_worker_rss_mib']:.0f}" for k, v in r["tasks"].items()), flush=True)
            if not args.keep:
                import shutil

                shutil.rmtree(run_dir / "output.zarr", ignore_errors=True)
        mid = runs[len(runs) // 2]
        wall = C.median([r["wall_s"] for r in runs])
        cpu = C.median([r["cpu_s"] for r in runs])
        report["volumes"].append({
            "shape": list(shape), "voxels": nvox, "blocks": int(np.prod([-(-a // b) for a, b in zip(shape, block)])),
            "wall_s": wall, "cpu_s": cpu, "wall_s_runs": [r["wall_s"] for r in runs],
            "wall_us_per_voxel": 1e6 * wall / nvox, "cpu_us_per_voxel": 1e6 * cpu / nvox,
            "peak_worker_rss_mib": {k: v["peak_worker_rss_mib"] for k, v in mid["tasks"].items()},
            "worker_cpu_s": {k: v["worker_cpu_s"] for k, v in mid["tasks"].items()},
            "driver_peak_rss_mib": mid["driver_peak_rss_mib"],
            "max_worker_rss_mib": max(v["peak_worker_rss_mib"] for v in mid["tasks"].values()),
            "stage_blocks": mid["blocks"], "store_rows": mid["rows"], "store_bytes": mid["store_bytes"],
            "loadavg": [round(v, 2) for v in os.getloadavg()],
        })
    vols = report["volumes"]
    ref = vols[-1]
    for v in vols:
        v["wall_per_voxel_vs_largest"] = v["wall_us_per_voxel"] / ref["wall_us_per_voxel"]
        v["cpu_per_voxel_vs_largest"] = v["cpu_us_per_voxel"] / ref["cpu_us_per_voxel"]
    # flatness over the volumes with at least 10 blocks per worker (fixed start-up costs
    # dominate smaller runs; they are reported, not judged)
    judged = [v for v in vols if v["blocks"] >= 10 * args.workers] or vols
    cpus = [v["cpu_us_per_voxel"] for v in judged]
    report["flat_within_20pct"] = bool(max(cpus) <= 1.2 * min(cpus))
    report["judged_volumes"] = [v["voxels"] for v in judged]
    mem = [v["max_worker_rss_mib"] for v in vols]
    report["worker_memory_range_mib"] = [min(mem), max(mem)]
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    png = C.RESULTS / "scaling.png" if args.out is None else Path(args.out).with_suffix(".png")
    plot(report, png)
    report["plot"] = str(png.relative_to(C.ROOT)) if png.is_relative_to(C.ROOT) else str(png)
    head = "; ".join(f"{v['voxels'] / 1e6:.1f} Mvox: {v['wall_us_per_voxel']:.2f} us/vox wall, {v['cpu_us_per_voxel']:.2f} "
                     f"core-us/vox, max worker {v['max_worker_rss_mib']:.0f} MiB" for v in vols)
    head += f"; CPU/voxel flat within 20% over {len(judged)} volumes: {report['flat_within_20pct']}"
    print(head)
    C.save("scaling", report, head, out=args.out)


if __name__ == "__main__":
    main()
