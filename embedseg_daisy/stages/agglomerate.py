"""Hierarchical graph Mutex Watershed over fragments (proposed method) or hierarchical
mean-affinity agglomeration (baseline).

Level L works on regions of ``fanout**L`` blocks per axis; the last level's single
region covers the volume.  A region's nodes are the clusters its children produced
(level 1: fragments).  Its edges are (a) the edges its children passed up (edges
between two of a child's frozen clusters) and (b) fragment edges that cross between
two children or leave the region, read straight from the fragment-edge contributions
of the blocks along those faces and relabelled through the lookups of the levels
below.  Each edge is therefore seen once per level.

Regions of up to ``agglomerate.exact_region_vox`` voxels (and the last level) run the
graph MWS with freezing: clusters reached by an attractive edge leaving the region
first are frozen, and only merges the global MWS also makes are committed.  Frozen
clusters include those held back by a frozen neighbour anywhere in the region, so an
exact region's graph grows with its volume.  Larger regions decide locally: a plain
graph MWS over the region, and only clusters with an attractive edge leaving the region
stay open (see docs/design.md).  Writes ``lookups`` (node -> representative, only for nodes that
change) and ``level_edges`` (edges between two frozen / open clusters).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..fragment_graph import EDGE_FIELDS, EdgeTable, map_ids, representatives, typed_edges
from ..geometry import as_vec3, block_key, fragment_block_index, grid_shape
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .common import stage_prefix

_IN_CHUNK = 5000
#: fragment-edge blocks read (and aggregated) at a time: bounds the rows held at once
_BLOCKS_PER_READ = 16


def num_levels(block_grid, fanout) -> int:
    """Levels needed until one region covers the whole block grid (at least 1)."""
    levels = 1
    for n, f in zip(block_grid, fanout):
        if f > 1 and n > 1:
            levels = max(levels, math.ceil(math.log(n) / math.log(f) - 1e-9))
    return max(levels, 1)


def chase_lookups(store, graph: str, ids: np.ndarray, up_to_level: int) -> np.ndarray:
    """Map ids through the lookups of levels 1..up_to_level (representatives)."""
    ids = np.asarray(ids, np.int64)
    for level in range(1, up_to_level + 1):
        uniq = np.unique(ids)
        keys, values = [], []
        for start in range(0, len(uniq), _IN_CHUNK):
            chunk = uniq[start : start + _IN_CHUNK]
            rows = store.find_arrays(
                "lookups",
                {"graph": graph, "level": level, "node": {"in": chunk.tolist()}},
                fields=["node", "parent"],
            )
            keys.append(rows["node"])
            values.append(rows["parent"])
        ids = map_ids(ids, np.concatenate(keys or [np.zeros(0, np.int64)]), np.concatenate(values or [np.zeros(0, np.int64)]))
    return ids


def _cartesian(axes) -> np.ndarray:
    """All (z, y, x) combinations of three index arrays, as an (N, 3) int64 array."""
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)


class AgglomerateLevel(Stage):
    name = "agglomerate"

    def __init__(self, run: RunContext, graph: str, level: int, levels: int):
        super().__init__(run)
        self.graph = graph
        self.level = level
        self.levels = levels
        self.fanout = as_vec3(self.cfg.agglomerate.fanout)
        self.seg_block = as_vec3(self.cfg.segment.block_shape_vox)

    @property
    def stage_id(self) -> str:
        return f"{stage_prefix(self.graph)}agglomerate_L{self.level}"

    @property
    def workers(self):
        return self.cfg.agglomerate

    def _region_blocks(self, level: int) -> tuple[int, int, int]:
        return as_vec3(f**level for f in self.fanout)

    @property
    def block_shape(self):
        if self.level == self.levels:
            return as_vec3(self.write_total_roi.shape)
        return as_vec3(b * r for b, r in zip(self.seg_block, self._region_blocks(self.level)))

    @property
    def context(self):
        # one child region on every side: cross edges reach into neighbouring children,
        # which must be finished (daisy derives the dependencies from this)
        return as_vec3(b * r for b, r in zip(self.seg_block, self._region_blocks(self.level - 1)))

    @property
    def block_grid(self):
        return grid_shape(self.run.volume_roi.shape, self.seg_block)

    # -- geometry in block-grid units -------------------------------------------------
    def _region_index_of_blocks(self, blocks: np.ndarray, level: int) -> np.ndarray:
        if level == self.levels:
            return np.zeros_like(blocks)
        return blocks // np.asarray(self._region_blocks(level), np.int64)

    def _region_block_range(self, info: BlockInfo) -> tuple[np.ndarray, np.ndarray]:
        rel = Coordinate(info.write_roi.offset) - Coordinate(self.run.volume_roi.offset)
        lo = np.asarray(rel, np.int64) // np.asarray(self.seg_block, np.int64)
        hi = -(-(np.asarray(rel, np.int64) + np.asarray(info.write_roi.shape, np.int64)) // np.asarray(self.seg_block))
        return lo, np.minimum(hi, np.asarray(self.block_grid))

    def _edge_offsets(self) -> list[tuple[int, int, int]]:
        """The offsets the fragment-edges stage turned into edges for this graph."""
        if self.graph == "mws":
            return self.cfg.offsets.all
        from ..offsets import BASELINE_LONG_RANGE, BASELINE_NEAREST

        return list(BASELINE_NEAREST) + list(BASELINE_LONG_RANGE)

    def _blocks_to_read(self, lo: np.ndarray, hi: np.ndarray) -> list[str]:
        """Blocks whose fragment-edge contributions can hold edges this region needs.

        An edge ``(p, p + o)`` is stored by the block of its owner voxel ``p`` and
        fragments never leave their block, so a block outside the region can hold an
        edge with an end inside it only if it lies on the side of ``-o``: along axis
        ``a``, below the region only if some offset has ``o_a > 0``, above it only if
        some has ``o_a < 0`` (offsets reach less than a block).  Reading just those
        neighbours instead of the whole ring reads the same rows that survive the
        region filter below (with the paper's offsets, 36 instead of 64 blocks for a
        2x2x2 region)."""
        offs = np.asarray(self._edge_offsets(), np.int64).reshape(-1, 3)
        below = (offs > 0).any(axis=0).astype(np.int64)
        above = (offs < 0).any(axis=0).astype(np.int64)
        grid = np.asarray(self.block_grid)
        ranges = [np.arange(a, b) for a, b in zip(np.maximum(lo - below, 0), np.minimum(hi + above, grid))]
        if self.level == 1:
            blocks = _cartesian(ranges)
        else:
            # only blocks next to a child face (or outside the region) hold edges that
            # cross children; edges inside one child come from its level_edges.  Built
            # axis by axis, so the work follows the faces, not the region's volume.
            child = np.asarray(self._region_blocks(self.level - 1), np.int64)
            slabs = []
            for a, r in enumerate(ranges):
                c = r // child[a]
                near = (r < lo[a]) | (r >= hi[a])
                near |= (r + 1 < grid[a]) & ((r + 1) // child[a] != c)
                near |= (r > 0) & ((r - 1) // child[a] != c)
                slabs.append(_cartesian([r[near] if b == a else ranges[b] for b in range(3)]))
            blocks = np.unique(np.concatenate(slabs), axis=0)
        return [block_key(b) for b in blocks]

    # -- the block body ------------------------------------------------------------------
    def setup(self) -> None:
        from ..store import open_store

        self.store = open_store(self.cfg)

    @property
    def local(self) -> bool:
        """Whether this level decides locally (regions above ``exact_region_vox``, not the last)."""
        cap = self.cfg.agglomerate.exact_region_vox
        if self.graph != "mws" or cap is None or self.level == self.levels:
            return False
        return int(np.prod(np.asarray(self.block_shape, np.int64))) > cap

    def _crossing_fragment_edges(self, lo: np.ndarray, hi: np.ndarray) -> EdgeTable:
        """Fragment edges this level needs, relabelled to the clusters of the level below.

        Read a few blocks at a time and aggregated as they come, so that memory follows
        the (much smaller) set of cluster pairs, not the rows on the faces."""
        keys = self._blocks_to_read(lo, hi)
        tables = []
        for start in range(0, len(keys), _BLOCKS_PER_READ):
            cols = self.store.find_arrays(
                "fragment_edges",
                {"graph": self.graph, "block": {"in": keys[start : start + _BLOCKS_PER_READ]}},
                fields=list(EDGE_FIELDS),
            )
            frag = EdgeTable.from_columns(cols)
            if len(frag):
                # edges with no end in the region belong to a neighbour (a fragment and
                # its cluster at any level share a region, so this can be decided first)
                frag = frag.take(self._in_blocks(frag.u, lo, hi) | self._in_blocks(frag.v, lo, hi))
            if self.level > 1 and len(frag):
                # edges inside one child come from its level_edges
                cu = self._home_region(frag.u, self.level - 1)
                cv = self._home_region(frag.v, self.level - 1)
                frag = frag.take(np.any(cu != cv, axis=1))
            if len(frag):
                ends = chase_lookups(self.store, self.graph, np.concatenate([frag.u, frag.v]), self.level - 1)
                frag = EdgeTable(
                    ends[: len(frag)],
                    ends[len(frag) :],
                    frag.attr_key,
                    frag.rep_key,
                    frag.aff_sum,
                    frag.aff_count,
                ).aggregate()
            tables.append(frag)
        return EdgeTable.concat(tables).aggregate()

    def _child_edges(self, lo: np.ndarray, hi: np.ndarray) -> EdgeTable:
        child_blocks = np.asarray(self._region_blocks(self.level - 1))
        clo, chi = lo // child_blocks, -(-hi // child_blocks)
        children = [block_key(c) for c in itertools.product(*(range(a, b) for a, b in zip(clo, chi)))]
        tables = []
        for start in range(0, len(children), _IN_CHUNK):
            cols = self.store.find_arrays(
                "level_edges",
                {"graph": self.graph, "level": self.level - 1, "region": {"in": children[start : start + _IN_CHUNK]}},
                fields=list(EDGE_FIELDS),
            )
            tables.append(EdgeTable.from_columns(cols))
        return EdgeTable.concat(tables)

    def _home_region(self, ids: np.ndarray, level: int) -> np.ndarray:
        blocks = fragment_block_index(ids, self.run.volume_roi.shape, self.seg_block)
        return self._region_index_of_blocks(blocks, level)

    def _in_blocks(self, ids: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Whether each node's home block (the block of its smallest fragment) lies in [lo, hi)."""
        blocks = fragment_block_index(ids, self.run.volume_roi.shape, self.seg_block)
        return np.all((blocks >= lo) & (blocks < hi), axis=1)

    def process(self, block: BlockInfo):
        lo, hi = self._region_block_range(block)
        edges = EdgeTable.concat(
            [self._crossing_fragment_edges(lo, hi), self._child_edges(lo, hi) if self.level > 1 else EdgeTable.empty()]
        ).aggregate()
        nodes = np.unique(np.concatenate([edges.u, edges.v]))
        inside = self._in_blocks(nodes, lo, hi)
        reps, frozen = self._cluster(nodes, inside, edges)
        # the size of the graph this worker held (benchmarks/agglomerate_memory.py reads it)
        self.graph_size = {"nodes": int(len(nodes)), "edges": int(len(edges)), "region_nodes": int(inside.sum()),
                           "open_clusters": int(len(np.unique(reps[inside & frozen])))}
        self._write(block, nodes, inside, reps, frozen, edges)
        return None

    def _cluster(self, nodes, inside, edges):
        """Cluster representatives (smallest node id) and, per node, whether its cluster
        stays open for the next level (frozen by the exact rules, or with an attractive
        edge leaving the region under the local rule)."""
        if len(nodes) == 0:
            return nodes.copy(), np.zeros(0, bool)
        u = np.searchsorted(nodes, edges.u)
        v = np.searchsorted(nodes, edges.v)
        indexed = EdgeTable(u, v, edges.attr_key, edges.rep_key, edges.aff_sum, edges.aff_count)
        if self.graph == "baseline":
            from ..baseline.agglomeration import hierarchical_mean_affinity

            clusters, frozen = hierarchical_mean_affinity(
                len(nodes), indexed.u, indexed.v, indexed.aff_sum, indexed.aff_count, inside, self.cfg.baseline.maa_threshold
            )
        elif self.local:
            from ..mws import local_region_clusters

            clusters, frozen = local_region_clusters(len(nodes), *typed_edges(indexed), inside)
        else:
            from ..mws import graph_mutex_watershed

            eu, ev, keys, attractive = typed_edges(indexed)
            clusters, frozen = graph_mutex_watershed(len(nodes), eu, ev, keys, attractive, inside)
        clusters = np.asarray(clusters)
        # outside nodes never merge; keep them as their own clusters
        reps = representatives(nodes, np.where(inside, clusters, -1 - np.arange(len(nodes))))
        return reps, np.asarray(frozen, bool)

    def _write(self, block, nodes, inside, reps, frozen, edges):
        key = block.key
        changed = inside & (reps != nodes)
        self.store.put(
            "lookups",
            {
                "graph": [self.graph] * int(changed.sum()),
                "level": [self.level] * int(changed.sum()),
                "node": nodes[changed],
                "parent": reps[changed],
                "region": [key] * int(changed.sum()),
            },
            replace_where={"graph": self.graph, "level": self.level, "region": key},
        )
        if self.level == self.levels:
            return
        # edges between two frozen clusters of this region travel up a level
        idx_u = np.searchsorted(nodes, edges.u)
        idx_v = np.searchsorted(nodes, edges.v)
        keep = inside[idx_u] & inside[idx_v] & frozen[idx_u] & frozen[idx_v]
        up = EdgeTable(
            reps[idx_u][keep], reps[idx_v][keep], edges.attr_key[keep], edges.rep_key[keep], edges.aff_sum[keep], edges.aff_count[keep]
        ).aggregate()
        n = len(up)
        self.store.put(
            "level_edges",
            {"graph": [self.graph] * n, "level": [self.level] * n, "region": [key] * n, **up.columns()},
            replace_where={"graph": self.graph, "level": self.level, "region": key},
        )


def stages(run: RunContext, graph: str) -> list[Stage]:
    seg_block = run.cfg.segment.block_shape_vox
    grid = grid_shape(run.volume_roi.shape, seg_block)
    levels = num_levels(grid, run.cfg.agglomerate.fanout)
    return [AgglomerateLevel(run, graph, level, levels) for level in range(1, levels + 1)]


def region_roi(run: RunContext, level_stage: AgglomerateLevel, index) -> Roi:
    shape = Coordinate(level_stage.block_shape)
    return Roi(Coordinate(run.volume_roi.offset) + Coordinate(index) * shape, shape).intersect(run.volume_roi)
