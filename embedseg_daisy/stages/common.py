"""Helpers shared by the block stages: dataset names per graph, ROIs with margins."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..offsets import max_reach
from ..pipeline.stage import RunContext, Stage
from ..volumes import prepare_volume

#: output dataset names per graph ("mws" = the proposed method, "baseline")
DATASETS = {
    "mws": {
        "affinities": "affinities",
        "mask": "mask",
        "embeddings": "embeddings",
        "fragments": "fragments",
        "segmentation": "segmentation",
        "segmentation_mea": "segmentation_mea",
    },
    "baseline": {
        "affinities": "baseline_affinities",
        "mask": None,
        "embeddings": None,
        "fragments": "baseline_fragments",
        "segmentation": "baseline_segmentation",
        "segmentation_mea": "baseline_segmentation_mea",
    },
}


def dataset(graph: str, what: str) -> str:
    name = DATASETS[graph][what]
    if name is None:
        raise KeyError(f"graph {graph!r} has no {what} dataset")
    return name


def stage_prefix(graph: str) -> str:
    return "" if graph == "mws" else f"{graph}_"


def grown(roi: Roi, margin, bounds: Roi) -> Roi:
    """``roi`` grown by ``margin`` voxels on every side, cropped to ``bounds``."""
    m = Coordinate(margin)
    return roi.grow(m, m).intersect(bounds)


def reach_of(offsets) -> tuple[int, int, int]:
    return max_reach(offsets)


class GraphStage(Stage):
    """A stage run for one graph: ``"mws"`` (the proposed method) or ``"baseline"``.

    Its id is the graph's prefix + ``name`` (``fragments``, ``baseline_fragments``), and
    its workers are configured in the config section named by ``section``."""

    section: ClassVar[str]

    def __init__(self, run: RunContext, graph: str):
        super().__init__(run)
        self.graph = graph

    @property
    def stage_id(self) -> str:
        return f"{stage_prefix(self.graph)}{self.name}"

    @property
    def workers(self):
        return getattr(self.cfg, self.section)

    def prepare_output(self, what: str, dtype=np.uint64, **kwargs) -> None:
        """Create this graph's ``what`` dataset over the volume, chunked to the block grid
        (idempotent; ``kwargs`` go to :func:`~embedseg_daisy.volumes.prepare_volume`)."""
        prepare_volume(
            self.run.output,
            dataset(self.graph, what),
            roi=self.run.volume_roi,
            voxel_size=self.run.voxel_size,
            dtype=dtype,
            chunk_shape=self.block_shape,
            **kwargs,
        )
