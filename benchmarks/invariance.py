"""Block-size invariance of the segmentation, through daisy and the store.

    python benchmarks/invariance.py [--shape 16 192 192] [--seed 4001] [--network]

Runs fragments → fragment_edges → agglomerate → relabel on the same affinities with
one block covering the volume and with three smaller block sizes (blocks smaller than
the largest objects), for both MWS implementations: ``lean`` (our exact blockwise MWS)
and ``mwatershed`` (the reference library per block with context, fragments stitched
by the same graph MWS).  Reports VI (nats) of every blockwise result against the
one-block result, on oracle affinities (ground truth + noise) and, with ``--network``,
on the shipped embedding net's predicted affinities.  Saves
``benchmarks/results/invariance.json`` and appends a line to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from embedseg_daisy.config import load_config, results_hash  # noqa: E402
from embedseg_daisy.evaluation.metrics import variation_of_information  # noqa: E402
from embedseg_daisy.pipeline.driver import execute  # noqa: E402
from embedseg_daisy.volumes import claim_output, open_volume, prepare_volume  # noqa: E402

from pipeline_helpers import make_input, oracle_outputs, segment_config, write_config  # noqa: E402

BLOCKS = [(8, 64, 64), (6, 48, 96), (5, 40, 40)]


def copy_predictions(src: Path, dst: Path, block) -> None:
    from funlib.geometry import Roi

    for name in ("affinities", "mask"):
        vol = open_volume(str(src), name)
        data = vol.read(vol.roi)
        out = prepare_volume(
            str(dst),
            name,
            roi=vol.roi,
            voxel_size=tuple(vol.voxel_size),
            dtype=data.dtype,
            chunk_shape=tuple(block),
            channels=data.shape[0] if data.ndim == 4 else None,
            # only our own attributes: funlib writes its metadata (voxel size, offset, axes) itself
            attrs={k: v for k, v in vol.attrs.items() if k == "offsets"},
        )
        out.write(Roi(vol.roi.offset, vol.roi.shape), data)


def run(tmp: Path, name: str, block, implementation: str, labels, predictions: Path | None) -> tuple[np.ndarray, float]:
    data = segment_config(tmp, name, block, segment__implementation=implementation)
    path = write_config(tmp / f"{name}.json", data)
    cfg = load_config(path)
    claim_output(cfg.output.container, cfg.name, results_hash(cfg))
    if predictions is None:
        oracle_outputs(tmp / f"{name}.zarr", labels, noise=0.15, block=block)
    else:
        copy_predictions(predictions, tmp / f"{name}.zarr", block)
    t0 = time.time()
    outcome = execute(str(path), cfg, progress=False)
    if not outcome.ok:
        raise RuntimeError(outcome.messages)
    seg = open_volume(cfg.output.container, "segmentation")
    return seg.read(seg.roi), time.time() - t0


def predict_once(tmp: Path, shape) -> Path:
    """Embedding-net predictions for the input volume (one run of the predict stage)."""
    cfg = {
        "name": "predictions",
        "input": {"container": str(tmp / "input.zarr"), "labels": "labels"},
        "output": {"container": str(tmp / "predictions.zarr")},
        "predict": {"checkpoint": str(ROOT / "checkpoints" / "embedding_tiny.pt"), "block_shape_vox": list(shape), "batch_size": 4},
        "stages": ["predict"],
    }
    path = write_config(tmp / "predictions.json", cfg)
    outcome = execute(str(path), load_config(path), progress=False)
    if not outcome.ok:
        raise RuntimeError(outcome.messages)
    return tmp / "predictions.zarr"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 192, 192])
    parser.add_argument("--seed", type=int, default=4001)
    parser.add_argument("--network", action="store_true", help="also on the embedding net's predictions")
    parser.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work" / "invariance"))
    args = parser.parse_args(argv)
    tmp = Path(args.workdir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shape = tuple(args.shape)
    labels = make_input(tmp / "input.zarr", shape, seed=args.seed)
    sources = {"oracle": None}
    if args.network:
        sources["network"] = predict_once(tmp, shape)
    results = []
    for source, predictions in sources.items():
        for implementation in ("lean", "mwatershed"):
            ref, t_ref = run(tmp, f"{source}-{implementation}-one", shape, implementation, labels, predictions)
            vi_gt = variation_of_information(labels, ref)
            row = {
                "affinities": source,
                "implementation": implementation,
                "one_block_seconds": t_ref,
                "one_block_vs_gt": {"split": vi_gt.split, "merge": vi_gt.merge},
                "blocks": [],
            }
            for i, block in enumerate(BLOCKS):
                seg, t = run(tmp, f"{source}-{implementation}-b{i}", block, implementation, labels, predictions)
                vi = variation_of_information(ref, seg)
                row["blocks"].append(
                    {
                        "block": list(block),
                        "vi_vs_one_block": vi.split + vi.merge,
                        "identical": bool(np.array_equal(seg, ref)),
                        "seconds": t,
                    }
                )
            results.append(row)
            print(json.dumps(row))
    payload = {
        "command": "python benchmarks/invariance.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "shape": list(shape),
        "units": "nats",
        "results": results,
    }
    out = ROOT / "benchmarks" / "results" / "invariance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    worst = {f"{r['affinities']}/{r['implementation']}": max(b["vi_vs_one_block"] for b in r["blocks"]) for r in results}
    with open(ROOT / "BENCHMARKS.md", "a") as f:
        f.write(
            f"\n- {payload['date']} `{payload['command']}` ({payload['machine']}): block-size invariance, "
            f"worst VI vs one block (nats): " + ", ".join(f"{k} {v:.4f}" for k, v in worst.items()) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
