"""Predict stage (GPU workers): blended metric-graph affinities and background mask.

Each block computes every lattice patch whose output crop touches its write ROI
(patches on the global lattice, so the result does not depend on the block size),
blends, quantises to uint8 and writes ``affinities`` ``(K, z, y, x)`` (offsets in the
attributes) and ``mask`` (background probability × 255).  The baseline variant runs
the affinity net and writes ``baseline_affinities`` (its own 12 offsets).
"""

from __future__ import annotations

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..errors import InputError
from ..geometry import as_vec3
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .common import GraphStage, dataset


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into [0, n) (edge voxel not repeated), for any distance outside."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def raw_reader(raw):
    """A function reading raw as float32 in [0, 1] for any voxel box; voxels outside the
    raw dataset are mirrored back into it (the net needs context at the volume border,
    and a mirror keeps membranes continuous where zero padding would not)."""
    raw_roi = raw.roi

    def read(box: Roi) -> np.ndarray:
        axes = []
        for b, e, rb, n in zip(box.begin, box.end, raw_roi.begin, raw_roi.shape):
            axes.append(_reflect(np.arange(b - rb, e - rb), int(n)))
        lo = Coordinate(int(a.min()) for a in axes)
        hi = Coordinate(int(a.max()) + 1 for a in axes)
        data = raw.read(Roi(Coordinate(raw_roi.begin) + lo, hi - lo))
        data = data[np.ix_(*(a - l for a, l in zip(axes, lo)))]
        if data.dtype == np.uint8:
            return data.astype(np.float32) / np.float32(255.0)
        data = data.astype(np.float32)
        if not np.isfinite(data).all():
            raise InputError(f"raw dataset {raw.path} contains NaN or inf values in ROI {box} (voxels)")
        return data

    return read


class Predict(GraphStage):
    name = "predict"
    section = "predict"
    gpu = True

    @property
    def block_shape(self):
        return as_vec3(self.cfg.predict.block_shape_vox)

    @property
    def checkpoint(self) -> str:
        return self.cfg.predict.checkpoint if self.graph == "mws" else (self.cfg.baseline.checkpoint or "")

    def offsets(self) -> list[tuple[int, int, int]]:
        if self.graph == "mws":
            return self.cfg.offsets.all
        from ..offsets import BASELINE_LONG_RANGE, BASELINE_NEAREST

        return list(BASELINE_NEAREST) + list(BASELINE_LONG_RANGE)

    def outputs(self) -> list[str]:
        out = [dataset(self.graph, "affinities")]
        if self.graph == "mws":
            out.append(dataset(self.graph, "mask"))
        return out

    def prepare(self) -> None:
        offsets = self.offsets()
        self.prepare_output(
            "affinities",
            np.uint8,
            channels=len(offsets),
            attrs={"offsets": [list(o) for o in offsets], "encoding": "uint8: affinity * 255, edge (p, p + offset)"},
        )
        if self.graph == "mws":
            self.prepare_output("mask", np.uint8, attrs={"encoding": "uint8: background probability * 255"})

    def setup(self) -> None:
        import torch

        from ..nn.checkpoint import load_checkpoint

        cfg = self.cfg.predict
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        kind = "embedding" if self.graph == "mws" else "affinity"
        self.model, self.spec = load_checkpoint(self.checkpoint, device=device, expected_kind=kind)
        if device == "cpu":
            from ..nn.cpu import fast_inference

            self.model = fast_inference(self.model)
        self.read_raw = raw_reader(self.run.raw)
        self.affs = self.run.open_output(dataset(self.graph, "affinities"), mode="r+")
        self.mask = self.run.open_output(dataset(self.graph, "mask"), mode="r+") if self.graph == "mws" else None

    def process(self, block: BlockInfo):
        from ..inference import predict_box, predict_box_affinity

        common = dict(
            output_patch=tuple(self.spec.output_crop),
            input_patch=tuple(self.spec.input_shape),
            batch_size=self.cfg.predict.batch_size,
            device=self.device,
            quantize=True,
        )
        if self.graph == "mws":
            pred = predict_box(self.model, self.read_raw, block.write_roi, self.run.volume_roi, self.offsets(), **common)
            self.affs.write(block.write_roi, pred.affinities)
            self.mask.write(block.write_roi, pred.background)
        else:
            pred = predict_box_affinity(self.model, self.read_raw, block.write_roi, self.run.volume_roi, self.offsets(), **common)
            self.affs.write(block.write_roi, pred.affinities)
        return None


def stages(run: RunContext, graph: str) -> list[Stage]:
    return [Predict(run, graph)]
