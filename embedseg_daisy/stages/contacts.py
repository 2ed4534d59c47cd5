"""Contacts stage: contact pieces of each block of a segmentation, with the links and
face edges that stitch them across block faces (section 2.3, see
:mod:`embedseg_daisy.contacts`).  Rows are sharded by segment pair so the candidates
stage can stitch shard by shard."""

from __future__ import annotations

import numpy as np
from funlib.geometry import Coordinate

from ..contacts import block_contacts_with_gaps, pair_shard
from ..geometry import as_vec3
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .common import GraphStage, dataset, grown


def local_box(block: BlockInfo, volume_origin) -> tuple[tuple[int, ...], tuple[int, ...]]:
    begin = Coordinate(block.write_roi.begin) - Coordinate(volume_origin)
    end = Coordinate(block.write_roi.end) - Coordinate(volume_origin)
    return tuple(begin), tuple(end)


class Contacts(GraphStage):
    name = "contacts"
    section = "contacts"

    @property
    def block_shape(self):
        return as_vec3(self.cfg.contacts.block_shape_vox)

    @property
    def context(self):
        gap = self.cfg.contacts.gap_vox
        return (1, gap + 1, gap + 1)

    @property
    def segmentation_name(self) -> str:
        return dataset(self.graph, "segmentation")

    def setup(self) -> None:
        from ..store import open_store

        self.store = open_store(self.cfg)
        self.seg = self.run.open_output(self.segmentation_name)
        self.affs = self.run.open_output(dataset(self.graph, "affinities"))
        if self.graph == "mws":
            self.nn_channels = self.cfg.offsets.nearest_channels()
        else:
            self.nn_channels = [0, 1, 2]  # BASELINE_NEAREST is (-1,0,0), (0,-1,0), (0,0,-1)

    def process(self, block: BlockInfo):
        vol = self.run.volume_roi
        gap = self.cfg.contacts.gap_vox
        read = grown(block.write_roi, (1, gap + 1, gap + 1), vol)
        seg = self.seg.read(read)
        affs = self.affs.read(read)[self.nn_channels]
        origin = Coordinate(read.begin) - Coordinate(vol.begin)
        result = block_contacts_with_gaps(seg, affs, local_box(block, vol.begin), tuple(origin), tuple(vol.shape), gap)
        shards = self.cfg.contacts.shards
        name = self.segmentation_name
        p, links, edges = result.pieces, result.links, result.edge_to_piece
        where = {"segmentation": name, "block": block.key}
        self.store.put(
            "contact_pieces",
            {
                "segmentation": [name] * len(p),
                "block": [block.key] * len(p),
                "piece": p["piece_id"].astype(np.int64),
                "shard": pair_shard(p["seg_a"], p["seg_b"], shards),
                "s1": p["seg_a"].astype(np.int64),
                "s2": p["seg_b"].astype(np.int64),
                "size": p["size"],
                "sum_z2": p["sum_z2"],
                "sum_y2": p["sum_y2"],
                "sum_x2": p["sum_x2"],
                "aff_sum": p["aff_sum"],
            },
            replace_where=where,
        )
        self.store.put(
            "contact_links",
            {
                "segmentation": [name] * len(links),
                "block": [block.key] * len(links),
                "piece": links["piece_id"].astype(np.int64),
                "edge": links["edge_id"].astype(np.int64),
                "shard": pair_shard(links["seg_a"], links["seg_b"], shards),
                "s1": links["seg_a"].astype(np.int64),
                "s2": links["seg_b"].astype(np.int64),
            },
            replace_where=where,
        )
        self.store.put(
            "contact_edges",
            {
                "segmentation": [name] * len(edges),
                "block": [block.key] * len(edges),
                "edge": edges["edge_id"].astype(np.int64),
                "piece": edges["piece_id"].astype(np.int64),
                "shard": pair_shard(edges["seg_a"], edges["seg_b"], shards),
                "s1": edges["seg_a"].astype(np.int64),
                "s2": edges["seg_b"].astype(np.int64),
            },
            replace_where=where,
        )
        return None


def stages(run: RunContext, graph: str) -> list[Stage]:
    return [Contacts(run, graph)]
