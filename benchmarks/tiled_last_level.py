"""A tiled last agglomeration level against the whole-volume one.

    python benchmarks/tiled_last_level.py [--shape 48 768 768] [--tiles 6,12,12 6,8,8 2,4,4 1,2,2]

``agglomerate.last_level_tile_blocks`` splits the last level into tiles that each run the
graph Mutex Watershed on the cross-region edges their blocks own; a connected-components
step joins their merges.  On the same affinities: one run of ``python -m
embedseg_daisy.run`` (fragments -> fragment_edges -> agglomerate -> relabel, blocks
8x64x64, fanout 2, ``exact_region_vox`` 2097152 so the level below the last is local)
with one last region; then, on that run's store, the last level again per tile shape:
the tile and components stages' own ``process`` for every block, serially in this
process, and the fragments relabelled through the resulting lookups.  (That the
pipeline runs them the same way, and that one tile over the volume reproduces the
untiled result, is tested in ``tests/test_pipeline_segment.py``.)  Reported per tile
shape: VI (nats) against the untiled segmentation and against ground truth, and the
seconds of the tiles and of the components step, and which tiled segments join several
untiled ones (the extra merges, with the voxel counts of their parts).  Affinities: the shipped embedding
net on a held-out synthetic volume (``benchmarks/local_levels.py``'s cache) and oracle
affinities.  Results: ``benchmarks/results/tiled_last_level.json`` and a line in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import local_levels as LL  # noqa: E402

STAGES = ["fragments", "fragment_edges", "agglomerate", "relabel"]
WORK = C.WORK / "tiled_last_level"


def network_dir(shape, seed: int, checkpoint: Path) -> Path:
    """The net's affinities and background mask in the layout of ``C.oracle_data``."""
    from funlib.geometry import Roi

    from embedseg_daisy.volumes import prepare_volume

    out = C.DATA / f"network-{'x'.join(map(str, shape))}-s{seed}"
    if (out / "done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    LL.network_data(shape, seed, checkpoint)  # builds the cache
    z = np.load(LL.WORK / f"net-{'x'.join(map(str, shape))}-s{seed}.npz")
    roi = Roi((0, 0, 0), tuple(shape))
    chunk = (16, 128, 128)
    inp, orc = str(out / "input.zarr"), str(out / "oracle.zarr")
    kw = {"roi": roi, "voxel_size": C.VOXEL_SIZE, "chunk_shape": chunk}
    prepare_volume(inp, "raw", dtype=np.uint8, **kw).write(roi, np.full(tuple(shape), 128, np.uint8))
    prepare_volume(inp, "labels", dtype=np.uint64, **kw).write(roi, z["labels"])
    offsets = [list(o) for o in LL.OFFSETS]
    prepare_volume(orc, "affinities", dtype=np.uint8, channels=len(offsets), attrs={"offsets": offsets},
                   **kw).write(roi, z["affs"])
    prepare_volume(orc, "mask", dtype=np.uint8, **kw).write(roi, z["bg"])
    (out / "done").write_text("")
    return out


def read(config: Path, name: str) -> np.ndarray:
    from embedseg_daisy.config import load_config
    from embedseg_daisy.volumes import open_volume

    vol = open_volume(load_config(config).output.container, name)
    return vol.read(vol.roi)


def run_blocks(stage) -> float:
    """Every block of ``stage``, serially, as a worker would run them; seconds."""
    t = time.perf_counter()
    stage.setup()
    for index in itertools.product(*(range(g) for g in stage.grid_shape)):
        stage.process(stage.block_at(index))
    return time.perf_counter() - t


def merges_over(untiled: np.ndarray, seg: np.ndarray) -> dict:
    """Segments of ``seg`` that join several untiled segments: how many, and the voxel
    counts of the parts of the largest such joins (foreground only)."""
    fg = untiled != 0
    pairs, counts = np.unique(np.stack([seg[fg], untiled[fg]]), axis=1, return_counts=True)
    joined, parts = np.unique(pairs[0], return_counts=True)
    joins = sorted((sorted(counts[pairs[0] == t].tolist(), reverse=True) for t in joined[parts > 1]),
                   key=sum, reverse=True)
    return {"segments": int(len(joined)), "joining_segments": int((parts > 1).sum()), "largest_joins": joins[:5]}


def compare(name: str, data: Path, labels: np.ndarray, block, tiles: list, workers: int) -> list[dict]:
    from embedseg_daisy.config import load_config
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.stages.agglomerate import chase_lookups, stages
    from embedseg_daisy.store import open_store

    run_dir = WORK / name
    config = C.run_config(data, run_dir, f"tiles-{name}", block=block, stages=STAGES, workers=workers,
                          extra={"agglomerate.exact_region_vox": 2097152})
    r = C.run_pipeline(config)
    untiled = read(config, "segmentation")
    fragments = read(config, "fragments")
    ids, inverse = np.unique(fragments, return_inverse=True)
    del fragments
    rows = [{"affinities": name, "shape": list(labels.shape), "block": list(block), "tile_blocks": None,
             "tiles": 1, "pipeline_wall_s": r["wall_s"], "vi_vs_untiled": LL.vi(untiled, untiled, ignore=()),
             "vi_vs_gt": LL.vi(labels, untiled)}]
    print(f"{name} untiled: pipeline {r['wall_s']:.0f} s, VI vs GT {rows[0]['vi_vs_gt']['sum']:.4f}", flush=True)
    for tile in tiles:
        cfg = json.loads(config.read_text())
        cfg["agglomerate"]["last_level_tile_blocks"] = tile
        path = run_dir / f"tiles-{'x'.join(map(str, tile))}.json"
        path.write_text(json.dumps(cfg, indent=1))
        run = RunContext(load_config(path), str(path))
        *_, tile_stage, components = stages(run, "mws")
        if not tile_stage.stage_id.endswith("_tiles"):
            raise SystemExit(f"{name}: the level below the last is not local; nothing to tile")
        seconds = {"tiles": run_blocks(tile_stage), "components": run_blocks(components)}
        segs = ids.astype(np.int64)
        nz = ids != 0
        segs[nz] = chase_lookups(open_store(run.cfg), "mws", segs[nz], components.levels)
        seg = segs[inverse].reshape(labels.shape)
        row = {"affinities": name, "shape": list(labels.shape), "block": list(block), "tile_blocks": tile,
               "tiles": int(tile_stage.total_blocks), "seconds": seconds,
               "vi_vs_untiled": LL.vi(untiled, seg, ignore=()), "vi_vs_gt": LL.vi(labels, seg),
               "identical_to_untiled": bool(np.array_equal(untiled, seg)), "joins": merges_over(untiled, seg)}
        rows.append(row)
        print(f"{name} tiles {tile} ({row['tiles']} tiles): VI vs untiled {row['vi_vs_untiled']['sum']:.4f} "
              f"(split {row['vi_vs_untiled']['split']:.4f}, merge {row['vi_vs_untiled']['merge']:.4f}), vs GT "
              f"{row['vi_vs_gt']['sum']:.4f}; identical {row['identical_to_untiled']}; tiles {seconds['tiles']:.0f} s, "
              f"components {seconds['components']:.1f} s; {row['joins']['joining_segments']} of {row['joins']['segments']} "
              f"segments join untiled ones, largest parts {row['joins']['largest_joins'][:1]}", flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 768, 768])
    ap.add_argument("--network-seed", type=int, default=2003)
    ap.add_argument("--oracle-seed", type=int, default=1)
    ap.add_argument("--block", type=int, nargs=3, default=[8, 64, 64])
    ap.add_argument("--tiles", nargs="*", default=["6,12,12", "6,8,8", "2,4,4", "1,2,2"],
                    help="last_level_tile_blocks to try")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--checkpoint", default=str(C.ROOT / "checkpoints" / "embedding_tiny.pt"))
    ap.add_argument("--skip-network", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from embedseg_daisy.volumes import open_volume

    tiles = [[int(v) for v in t.split(",")] for t in args.tiles]
    rows = []
    sources = [] if args.skip_network else [("network", network_dir(args.shape, args.network_seed, Path(args.checkpoint)))]
    sources.append(("oracle", C.oracle_data(tuple(args.shape), seed=args.oracle_seed)))
    for name, data in sources:
        lab = open_volume(str(data / "input.zarr"), "labels")
        rows += compare(name, data, lab.read(lab.roi), tuple(args.block), tiles, args.workers)
    report = {"benchmark": "tiled last agglomeration level", "command": C.command_line(), "machine": C.machine(),
              "units": "nats", "runs": rows}
    head = "; ".join(f"{r['affinities']} tiles {r['tile_blocks']} ({r['tiles']}): VI vs untiled "
                     f"{r['vi_vs_untiled']['sum']:.4f}, vs GT {r['vi_vs_gt']['sum']:.4f}"
                     for r in rows if r["tile_blocks"] is not None)
    C.save("tiled_last_level", report, head, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
