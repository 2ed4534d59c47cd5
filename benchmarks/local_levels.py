"""Exact vs local agglomeration levels: what ``agglomerate.exact_region_vox`` costs in
accuracy and saves in graph size.

    python benchmarks/local_levels.py [--network-shape 48 768 768] [--oracle-shape 48 768 768]

On the same affinities, the in-memory reference of the pipeline
(:func:`embedseg_daisy.mws.blockwise_mutex_watershed`, the scheme the stages run) with
every level exact and with local levels above several region sizes.  Reported per run:
VI (nats) against the exact whole-volume Mutex Watershed and against ground truth, and
the nodes and edges each hierarchy level holds (the quantity a worker's memory
follows).  Affinities: the shipped embedding net on a held-out synthetic volume
(cached under ``benchmarks/work/local_levels/``; the net runs at ~25 kvox/s on 2 CPU
cores) and oracle affinities (``_common.oracle_data``).  Results:
``benchmarks/results/local_levels.json`` and a line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from embedseg_daisy.evaluation.metrics import variation_of_information  # noqa: E402
from embedseg_daisy.mws import blockwise_mutex_watershed, mutex_watershed  # noqa: E402
from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE  # noqa: E402

OFFSETS = list(PAPER_ATTRACTIVE) + list(PAPER_REPULSIVE)
ATTRACTIVE = [True] * len(PAPER_ATTRACTIVE) + [False] * len(PAPER_REPULSIVE)
WORK = C.WORK / "local_levels"


def network_data(shape, seed: int, checkpoint: Path):
    """(affinities uint8, foreground, labels) of the net on a synthetic volume (cached)."""
    cache = WORK / f"net-{'x'.join(map(str, shape))}-s{seed}.npz"
    if not cache.exists():
        import torch

        from embedseg_daisy.inference import array_reader, predict_box
        from embedseg_daisy.nn.checkpoint import load_checkpoint
        from embedseg_daisy.synth import generate_volume

        t = time.perf_counter()
        vol = generate_volume(tuple(shape), seed)
        model, _ = load_checkpoint(checkpoint, expected_kind="embedding")
        model.eval()
        with torch.no_grad():
            p = predict_box(model, array_reader(vol.raw), ((0, 0, 0), tuple(shape)), tuple(shape), OFFSETS,
                            batch_size=4, quantize=True)
        WORK.mkdir(parents=True, exist_ok=True)
        np.savez(cache, affs=p.affinities, bg=p.background, labels=vol.labels)
        print(f"network predictions {shape} in {time.perf_counter() - t:.0f} s -> {cache}", flush=True)
    z = np.load(cache)
    from embedseg_daisy.stages.fragments import foreground_from_mask

    return z["affs"], foreground_from_mask(z["bg"], 0.6), z["labels"]


def oracle(shape, seed: int):
    from embedseg_daisy.volumes import open_volume

    data = C.oracle_data(tuple(shape), seed=seed)
    affs, fg = C.load_oracle_arrays(data)
    labels = open_volume(str(data / "input.zarr"), "labels")
    return affs, fg, labels.read(labels.roi)


def vi(a, b, ignore=(0,)) -> dict:
    r = variation_of_information(a, b, ignore_gt=ignore)
    return {"split": r.split, "merge": r.merge, "sum": r.split + r.merge}


def compare(name, affs, fg, labels, block, caps, context) -> list[dict]:
    exact = mutex_watershed(affs, OFFSETS, ATTRACTIVE, fg)
    rows = []
    for cap in caps:
        t = time.perf_counter()
        res = blockwise_mutex_watershed(affs, OFFSETS, ATTRACTIVE, fg, block_shape=block, context=context,
                                        exact_region_vox=cap)
        row = {
            "affinities": name, "shape": list(affs.shape[1:]), "block": list(block),
            "exact_region_vox": cap, "seconds": time.perf_counter() - t,
            "vi_vs_exact": vi(exact, res.labels, ignore=()), "vi_vs_gt": vi(labels, res.labels),
            "levels": [{"nodes": lv["nodes"], "edges": lv["edges"], "regions": lv["regions"]} for lv in res.stats["levels"]],
            "fragments": res.stats["fragments"], "frozen_fragments": res.stats["frozen_fragments"],
        }
        rows.append(row)
        top = row["levels"][-1]
        print(f"{name} {tuple(affs.shape[1:])} block {block} exact_region_vox {cap}: VI vs exact "
              f"{row['vi_vs_exact']['sum']:.4f} (split {row['vi_vs_exact']['split']:.4f}, merge "
              f"{row['vi_vs_exact']['merge']:.4f}), vs GT {row['vi_vs_gt']['sum']:.4f}; last level "
              f"{top['nodes']} nodes, {top['edges']} edges; per level " +
              ", ".join(f"L{i + 1} {lv['nodes']}/{lv['edges']}" for i, lv in enumerate(row["levels"])), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network-shape", type=int, nargs=3, default=[48, 768, 768])
    ap.add_argument("--network-seed", type=int, default=2003)
    ap.add_argument("--oracle-shape", type=int, nargs=3, default=[48, 768, 768])
    ap.add_argument("--oracle-seed", type=int, default=1)
    ap.add_argument("--block", type=int, nargs=3, default=[8, 64, 64])
    ap.add_argument("--context", type=int, nargs=3, default=[4, 16, 16], help="segment.context_vox")
    ap.add_argument("--caps", default="none,2097152,262144,0",
                    help="exact_region_vox values ('none': every level exact)")
    ap.add_argument("--checkpoint", default=str(C.ROOT / "checkpoints" / "embedding_tiny.pt"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    caps = [None if c == "none" else int(c) for c in args.caps.split(",")]
    block, context = tuple(args.block), tuple(args.context)
    rows = []
    if any(args.network_shape):
        rows += compare("network", *network_data(args.network_shape, args.network_seed, Path(args.checkpoint)),
                        block, caps, context)
    if any(args.oracle_shape):
        rows += compare("oracle", *oracle(args.oracle_shape, args.oracle_seed), block, caps, context)
    report = {"benchmark": "exact vs local agglomeration levels", "command": C.command_line(),
              "machine": C.machine(), "units": "nats", "runs": rows}
    parts = []
    for r in rows:
        if r["exact_region_vox"] is None:
            continue
        exact_top = next(x for x in rows if x["affinities"] == r["affinities"] and x["exact_region_vox"] is None)
        parts.append(f"{r['affinities']} cap {r['exact_region_vox']}: VI vs exact {r['vi_vs_exact']['sum']:.4f}, "
                     f"last level {r['levels'][-1]['edges']} edges vs {exact_top['levels'][-1]['edges']} exact")
    C.save("local_levels", report, "; ".join(parts), out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
