"""Relabel stages: fragments -> segments, and segments -> segments after MEA merges."""

from __future__ import annotations

import numpy as np

from ..fragment_graph import map_ids
from ..geometry import as_vec3, grid_shape
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .agglomerate import chase_lookups, num_levels
from .common import GraphStage, dataset


class Relabel(GraphStage):
    """Writes ``segmentation`` (uint64) and the fragment -> segment table."""

    name = "relabel"
    section = "relabel"

    @property
    def block_shape(self):
        return as_vec3(self.cfg.segment.block_shape_vox)

    @property
    def levels(self) -> int:
        grid = grid_shape(self.run.volume_roi.shape, self.block_shape)
        return num_levels(grid, self.cfg.agglomerate.fanout)

    def outputs(self) -> list[str]:
        return [dataset(self.graph, "segmentation")]

    def prepare(self) -> None:
        self.prepare_output("segmentation")

    def setup(self) -> None:
        from ..store import open_store

        self.store = open_store(self.cfg)
        self.fragments = self.run.open_output(dataset(self.graph, "fragments"))
        self.segmentation = self.run.open_output(dataset(self.graph, "segmentation"), mode="r+")

    def process(self, block: BlockInfo):
        frags = self.fragments.read(block.write_roi)
        ids, inverse = np.unique(frags, return_inverse=True)
        nonzero = ids != 0
        segs = ids.astype(np.int64)
        if nonzero.any():
            segs[nonzero] = chase_lookups(self.store, self.graph, ids[nonzero].astype(np.int64), self.levels)
        self.segmentation.write(block.write_roi, segs.astype(np.uint64)[inverse].reshape(frags.shape))
        f, s = ids[nonzero].astype(np.int64), segs[nonzero]
        self.store.put(
            "fragment_segments",
            {"graph": [self.graph] * len(f), "fragment": f, "segment": s, "block": [block.key] * len(f)},
            replace_where={"graph": self.graph, "block": block.key},
        )
        return None


class RelabelMEA(GraphStage):
    """Applies mean-embedding agglomeration merges: ``segmentation_mea``."""

    name = "relabel_mea"
    section = "relabel"

    @property
    def block_shape(self):
        return as_vec3(self.cfg.segment.block_shape_vox)

    def outputs(self) -> list[str]:
        return [dataset(self.graph, "segmentation_mea")]

    def prepare(self) -> None:
        self.prepare_output("segmentation_mea")

    def setup(self) -> None:
        from ..store import open_store

        self.store = open_store(self.cfg)
        self.segmentation = self.run.open_output(dataset(self.graph, "segmentation"))
        self.output = self.run.open_output(dataset(self.graph, "segmentation_mea"), mode="r+")
        rows = self.store.find_columns(
            "candidates",
            {"segmentation": dataset(self.graph, "segmentation"), "status": "decided", "merge": 1},
            fields=["s1", "s2"],
        )
        self.keys, self.values = merge_map(np.asarray(rows["s1"], np.int64), np.asarray(rows["s2"], np.int64))

    def process(self, block: BlockInfo):
        seg = self.segmentation.read(block.write_roi)
        ids, inverse = np.unique(seg, return_inverse=True)
        mapped = map_ids(ids.astype(np.int64), self.keys, self.values).astype(np.uint64)
        self.output.write(block.write_roi, mapped[inverse].reshape(seg.shape))
        return None


def merge_map(s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of merge pairs: (ids, representative = smallest id)."""
    if len(s1) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inv = np.unique(np.concatenate([s1, s2]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(s1)), (inv[: len(s1)], inv[len(s1) :])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    mins = np.full(comp.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(mins, comp, nodes)
    return nodes, mins[comp]


def stages(run: RunContext, graph: str) -> list[Stage]:
    return [Relabel(run, graph)]


def mea_stages(run: RunContext, graph: str) -> list[Stage]:
    return [RelabelMEA(run, graph)]


