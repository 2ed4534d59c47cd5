"""Peak memory of one agglomerate region per level, on a finished run's store.

    python benchmarks/agglomerate_memory.py benchmarks/work/scaling/96x1024x1024/config.json \
        --regions 1:1,1,1 2:0,0,0 3:0,0,0

Each ``LEVEL:Z,Y,X`` (region index at that level; ``LEVEL_tiles`` for a tile of a tiled
last level, whose ``LEVEL`` is then the components step) runs in a fresh process:
``setup`` then ``process`` of that region exactly as a worker does (the region's rows
are replaced with identical ones, so the run is left as it was).  Reported: whether the
level is exact or local, the nodes and edges of the region's graph (and the open clusters
it passes up), seconds, and the process's peak RSS (``VmHWM``) over its RSS after setup,
also per edge.  Results: ``benchmarks/results/agglomerate_memory.json`` and a
line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def child(config: str, level: str, index: tuple[int, int, int]) -> dict:

    from embedseg_daisy.config import load_config
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.stages.agglomerate import stages

    run = RunContext(load_config(config))
    stage = next(s for s in stages(run, "mws") if s.stage_id == f"agglomerate_L{level}")
    stage.setup()
    base = C.status_kib("VmRSS")
    info = stage.block_at(index)
    lo, hi = stage._region_block_range(info)
    t = time.perf_counter()
    stage.process(info)
    return {
        "level": level, "stage": type(stage).__name__, "region": list(index), "levels": stage.levels,
        "blocks_in_region": int((hi - lo).prod()),
        "local": stage.local, **stage.graph_size,
        "rule": {"AgglomerateTiles": "tile", "AgglomerateComponents": "components"}.get(
            type(stage).__name__, "local" if stage.local else "exact"),
        "seconds": time.perf_counter() - t, "rss_after_setup_mib": base / 1024,
        "peak_mib": C.status_kib("VmHWM") / 1024, "peak_over_setup_mib": (C.status_kib("VmHWM") - base) / 1024,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--regions", nargs="+", default=["1:1,1,1", "2:0,0,0", "3:0,0,0"])
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.child:
        level, index = args.child
        print(json.dumps(child(args.config, level, tuple(int(v) for v in index.split(",")))))
        return 0
    rows = []
    for spec in args.regions:
        level, index = spec.split(":")
        r = C.child([__file__, args.config, "--child", level, index])
        r["bytes_per_edge_over_setup"] = r["peak_over_setup_mib"] * 2**20 / max(r["edges"], 1)
        print(f"  L{r['level']} region {r['region']} ({r['blocks_in_region']} blocks, "
              f"{r['rule']}): {r['nodes']} nodes, {r['edges']} edges, "
              f"{r.get('open_clusters', '-')} open clusters; {r['seconds']:.1f} s, peak {r['peak_mib']:.0f} MiB "
              f"(+{r['peak_over_setup_mib']:.0f} over setup, {r['bytes_per_edge_over_setup']:.0f} B/edge)", flush=True)
        rows.append(r)
    report = {"benchmark": "agglomerate peak memory per region and level", "command": C.command_line(),
              "machine": C.machine(), "config": args.config, "regions": rows}
    headline = "; ".join(f"L{r['level']} {r['region']} ({r['rule']}, {r['edges']} edges): "
                         f"{r['peak_mib']:.0f} MiB, {r['seconds']:.0f} s" for r in rows)
    C.save("agglomerate_memory", report, headline, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
