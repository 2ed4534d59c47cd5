"""Fragments stage (CPU workers).

Proposed method: exact blockwise Mutex Watershed on the foreground-restricted metric
graph.  The block's write ROI is the region; the array around it carries the offsets'
reach as context so that edges leaving the region are known; clusters reached by an
attractive edge leaving the region are frozen, so every fragment lies inside one
cluster of the whole-volume MWS (see docs/design.md).  Fragment ids are global
(1 + raster index of the first voxel).

Baseline: the watershed of Fig. S10 (waterz basins, size-dependent single linkage,
dust removal) on the block with context, cropped to the write ROI.

Writes ``fragments`` (uint64) and one ``fragments`` row per fragment (size, centroid,
bounding box, frozen flag; embedding sums when embeddings are written).
"""

from __future__ import annotations

import numpy as np
from funlib.geometry import Coordinate

from ..fragments import fragment_table, global_fragment_ids
from ..geometry import as_vec3
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .common import GraphStage, dataset, grown, reach_of


def foreground_from_mask(mask_u8: np.ndarray, theta_mask: float) -> np.ndarray:
    """Foreground restriction: a voxel is background when P(background) >= θ_mask.

    ``mask_u8`` holds P(background) × 255 (rounded), so the comparison is made on the
    same quantised scale the predict stage wrote."""
    return mask_u8.astype(np.float32) / np.float32(255.0) < np.float32(theta_mask)


class Fragments(GraphStage):
    name = "fragments"
    section = "segment"

    @property
    def block_shape(self):
        return as_vec3(self.cfg.segment.block_shape_vox)

    @property
    def context(self):
        extra = as_vec3(self.cfg.segment.context_vox)
        if self.graph == "mws" and self.cfg.segment.implementation == "lean":
            reach = reach_of(self.cfg.offsets.all)
            return as_vec3(e + r for e, r in zip(extra, reach))
        return extra

    def outputs(self) -> list[str]:
        return [dataset(self.graph, "fragments")]

    def prepare(self) -> None:
        reach = reach_of(self.cfg.offsets.all)
        if any(b < r for b, r in zip(self.block_shape, reach)):
            from ..errors import ConfigError

            raise ConfigError(
                f"segment.block_shape_vox {self.block_shape} must be at least the offsets' reach {reach} per axis"
            )
        self.prepare_output("fragments")

    def setup(self) -> None:
        from ..store import open_store

        self.store = open_store(self.cfg)
        self.affs = self.run.open_output(dataset(self.graph, "affinities"))
        self.mask = self.run.open_output(dataset(self.graph, "mask")) if self.graph == "mws" else None
        self.out = self.run.open_output(dataset(self.graph, "fragments"), mode="r+")
        self.embeddings = None
        if self.graph == "mws" and self.cfg.predict.write_embeddings:
            self.embeddings = self.run.open_output(dataset(self.graph, "embeddings"))

    # -- the two segmenters ----------------------------------------------------------
    def _mws(self, block: BlockInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vol = self.run.volume_roi
        read = grown(block.write_roi, self.context, vol)
        affs = self.affs.read(read)
        fg = foreground_from_mask(self.mask.read(read), self.cfg.segment.theta_mask)
        origin = Coordinate(read.begin) - Coordinate(vol.begin)

        def local(roi):
            return tuple(slice(int(b - r), int(e - r)) for b, e, r in zip(roi.begin, roi.end, read.begin))

        inside = local(block.write_roi)
        if self.cfg.segment.implementation == "lean":
            from ..mws import mutex_watershed_region

            # The region is the block plus `context_vox` (freezing then happens in the
            # context, not at the block faces, which keeps fragments whole); the array
            # adds the offsets' reach so edges leaving the region are known.  Only the
            # block is labelled.  Exact either way.
            region = grown(block.write_roi, self.cfg.segment.context_vox, vol)
            res = mutex_watershed_region(
                affs,
                self.cfg.offsets.all,
                self.cfg.offsets.attractive_mask,
                fg,
                local(region),
                tuple(origin),
                tuple(vol.shape),
                output=inside,
            )
            return res.labels, res.ids.astype(np.int64), res.frozen.astype(bool)
        from ..mws import mwatershed_reference

        labels = mwatershed_reference(affs, self.cfg.offsets.all, self.cfg.offsets.attractive_mask, fg)[inside]
        return self._finish_local(labels, block)

    def _watershed(self, block: BlockInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from ..baseline.watershed import watershed_fragments

        vol = self.run.volume_roi
        read = grown(block.write_roi, self.context, vol)
        affs = self.affs.read(read)[:3].astype(np.float32) / np.float32(255.0)
        ws = self.cfg.baseline.watershed
        labels = watershed_fragments(
            affs,
            t_min=ws.t_min,
            t_max=ws.t_max,
            size_threshold=ws.size_threshold,
            size_affinity=ws.size_affinity,
            dust=ws.dust,
        )
        inside = tuple(
            slice(int(b - r), int(e - r)) for b, e, r in zip(block.write_roi.begin, block.write_roi.end, read.begin)
        )
        return self._finish_local(labels[inside], block)

    def _finish_local(self, labels: np.ndarray, block: BlockInfo):
        """Connected pieces of a cropped local labelling, with global ids (all frozen:
        without the exact rule nothing is known to be final)."""
        from scipy import ndimage

        pieces = np.zeros(labels.shape, np.int64)
        nxt = 0
        for value in np.unique(labels):
            if value == 0:
                continue
            cc, n = ndimage.label(labels == value)
            pieces[cc > 0] = cc[cc > 0] + nxt
            nxt += n
        offset = Coordinate(block.write_roi.begin) - Coordinate(self.run.volume_roi.begin)
        ids_array, _, gids = global_fragment_ids(pieces, tuple(offset), tuple(self.run.volume_roi.shape))
        gids = np.sort(gids)
        return ids_array, gids.astype(np.int64), np.ones(len(gids), bool)

    def process(self, block: BlockInfo):
        if self.graph == "mws":
            labels, ids, frozen = self._mws(block)
        else:
            labels, ids, frozen = self._watershed(block)
        self.out.write(block.write_roi, labels)
        offset = Coordinate(block.write_roi.begin) - Coordinate(self.run.volume_roi.begin)
        emb = self.embeddings.read(block.write_roi) if self.embeddings is not None else None
        table = fragment_table(labels, tuple(offset), embeddings=emb)
        n = len(table.ids)
        if not np.array_equal(table.ids, ids):
            raise RuntimeError(f"fragment ids of block {block.key} disagree between the segmenter and the table")
        rows = {
            "graph": [self.graph] * n,
            "id": table.ids,
            "block": [block.key] * n,
            "size": table.sizes,
            "centroid": table.centroids.round(3).tolist(),
            "bbox": table.bboxes.tolist(),
            "embedding_count": table.sizes if emb is not None else [0] * n,
            "embedding_sum": table.embedding_sums.tolist() if emb is not None else [None] * n,
            "frozen": frozen.astype(np.int64),
        }
        self.store.put("fragments", rows, replace_where={"graph": self.graph, "block": block.key})
        return {}


def stages(run: RunContext, graph: str) -> list[Stage]:
    return [Fragments(run, graph)]
