"""Build small runs for pipeline tests: a synthetic input volume and, for the
segmentation stages, oracle affinities + background mask derived from the ground truth
(written where the predict stage would write them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from funlib.geometry import Roi

from embedseg_daisy.config import parse_config
from embedseg_daisy.mws.synthetic import label_affinities
from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE
from embedseg_daisy.synth import generate_volume, write_volume
from embedseg_daisy.volumes import prepare_volume

OFFSETS = list(PAPER_ATTRACTIVE) + list(PAPER_REPULSIVE)


def make_input(path: Path, shape=(12, 96, 96), seed=3) -> np.ndarray:
    vol = generate_volume(tuple(shape), seed)
    write_volume(str(path), vol)
    return vol.labels


def oracle_outputs(container: Path, labels: np.ndarray, *, noise=0.1, seed=0, block=(6, 48, 48)) -> None:
    """Affinities (uint8) and background mask from ground truth plus noise."""
    rng = np.random.default_rng(seed)
    affs = label_affinities(labels, OFFSETS, rng, noise=noise)
    background = (labels == 0).astype(np.float32)
    background = np.clip(background + rng.normal(0, noise, labels.shape) * np.sign(0.5 - background), 0, 1)
    roi = Roi((0, 0, 0), labels.shape)
    a = prepare_volume(
        str(container), "affinities", roi=roi, voxel_size=(29, 12, 12), dtype=np.uint8, chunk_shape=block,
        channels=len(OFFSETS), attrs={"offsets": [list(o) for o in OFFSETS]},
    )
    a.write(roi, affs)
    m = prepare_volume(str(container), "mask", roi=roi, voxel_size=(29, 12, 12), dtype=np.uint8, chunk_shape=block)
    m.write(roi, np.rint(background * 255).astype(np.uint8))


def write_config(path: Path, data: dict) -> Path:
    parse_config(data)  # fail early in the test, not in a worker
    path.write_text(json.dumps(data, indent=1))
    return path


def segment_config(tmp: Path, name: str, block=(6, 48, 48), stages=None, workers=2, **extra) -> dict:
    data = {
        "name": name,
        "input": {"container": str(tmp / "input.zarr"), "labels": "labels"},
        "output": {"container": str(tmp / f"{name}.zarr")},
        "predict": {"checkpoint": str(tmp / "unused.pt"), "block_shape_vox": list(block)},
        "segment": {"block_shape_vox": list(block), "workers": workers, "context_vox": [2, 8, 8]},
        "agglomerate": {"workers": workers},
        "relabel": {"workers": workers},
        "contacts": {"block_shape_vox": list(block), "workers": workers, "shards": 2},
        "stages": stages or ["fragments", "fragment_edges", "agglomerate", "relabel"],
    }
    for dotted, value in extra.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data
