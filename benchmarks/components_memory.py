"""Peak memory of the tiled last level's components step per merged cluster.

    python benchmarks/components_memory.py [--clusters 1000000 4000000 16000000]

The components step (``agglomerate_Ln`` with ``agglomerate.last_level_tile_blocks``)
is the one worker whose memory still follows the volume: it holds the ids of every
cluster some tile merged.  On a small run (tiles configured, nothing else computed) the
store is filled with N synthetic tile merges (node -> parent pairs, random ids below
2**62, spread over the tiles, joining the clusters into components of ~4), then the
step's own ``process`` runs in a fresh process: its peak RSS over its RSS after setup,
per merged cluster, and its seconds.  Results:
``benchmarks/results/components_memory.json`` and a line in BENCHMARKS.md.
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

WORK = C.WORK / "components_memory"


def child(config: str) -> dict:
    from embedseg_daisy.config import load_config
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.stages.agglomerate import stages

    run = RunContext(load_config(config))
    stage = stages(run, "mws")[-1]
    stage.setup()
    base = C.status_kib("VmRSS")
    t = time.perf_counter()
    stage.process(stage.block_at((0, 0, 0)))
    return {"seconds": time.perf_counter() - t, **stage.graph_size, "rss_after_setup_mib": base / 1024,
            "peak_mib": C.status_kib("VmHWM") / 1024, "peak_over_setup_mib": (C.status_kib("VmHWM") - base) / 1024}


def fill(config: Path, clusters: int, seed: int) -> None:
    """``clusters`` tile-merge rows: pairs (node, parent) with parent a random earlier
    node of the same group of 4, spread over the tiles."""
    from embedseg_daisy.config import load_config
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.stages.agglomerate import stages
    from embedseg_daisy.store import open_store

    run = RunContext(load_config(config))
    components = stages(run, "mws")[-1]
    keys = components._tile_keys()
    store = open_store(run.cfg)
    store.delete("tile_merges", {"graph": "mws"})
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(1, 2**62, int(clusters * 1.3)))[: clusters]
    ids = rng.permutation(ids)
    parents = ids.copy()
    groups = ids.reshape(-1, 4) if len(ids) % 4 == 0 else ids[: len(ids) // 4 * 4].reshape(-1, 4)
    parents[: groups.size] = np.repeat(groups.min(axis=1), 4)
    per_tile = -(-len(ids) // len(keys))
    for i, key in enumerate(keys):
        sl = slice(i * per_tile, (i + 1) * per_tile)
        n = len(ids[sl])
        if n:
            store.put("tile_merges", {"graph": ["mws"] * n, "level": [components.level] * n, "region": [key] * n,
                                      "node": ids[sl], "parent": parents[sl]})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    ap.add_argument("--child", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    data = C.oracle_data((16, 256, 256), seed=1)
    # blocks of 2x16x16: 2,048 tiles, so that (as on a large volume) each read of 16 tiles
    # holds a small share of the merges
    config = C.run_config(data, WORK, "components-memory", block=(2, 16, 16), stages=["agglomerate"], workers=1,
                          extra={"agglomerate.exact_region_vox": 0, "agglomerate.last_level_tile_blocks": [1, 1, 1]})
    rows = []
    for n in args.clusters:
        t = time.perf_counter()
        fill(config, n, seed=n)
        r = C.child([__file__, "--child", str(config)])
        r.update(clusters=n, fill_seconds=time.perf_counter() - t - r["seconds"],
                 bytes_per_cluster=r["peak_over_setup_mib"] * 2**20 / n)
        rows.append(r)
        print(f"  {n} merged clusters: peak {r['peak_mib']:.0f} MiB (+{r['peak_over_setup_mib']:.0f} over setup, "
              f"{r['bytes_per_cluster']:.0f} B/cluster), {r['seconds']:.1f} s", flush=True)
    slope = None
    if len(rows) > 1:
        slope = (rows[-1]["peak_over_setup_mib"] - rows[0]["peak_over_setup_mib"]) * 2**20 / (
            rows[-1]["clusters"] - rows[0]["clusters"])
    report = {"benchmark": "components step memory per merged cluster", "command": C.command_line(),
              "machine": C.machine(), "runs": rows, "marginal_bytes_per_cluster": slope}
    head = "; ".join(f"{r['clusters']}: +{r['peak_over_setup_mib']:.0f} MiB, {r['seconds']:.1f} s" for r in rows)
    if slope is not None:
        head += f"; marginal {slope:.0f} B per merged cluster"
    C.save("components_memory", report, head, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
