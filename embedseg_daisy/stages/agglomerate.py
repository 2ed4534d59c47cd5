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

With ``agglomerate.last_level_tile_blocks`` the last level is split: parallel tiles
(:class:`AgglomerateTiles`) decide the crossing edges their blocks own, and one
connected-components step (:class:`AgglomerateComponents`) turns their merges into the
last level's lookups, so no worker holds the whole-volume graph.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from funlib.geometry import Coordinate

from ..fragment_graph import EDGE_FIELDS, EdgeTable, map_ids, representatives, typed_edges
from ..geometry import as_vec3, block_key, fragment_block_index, grid_shape
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .common import stage_prefix

_IN_CHUNK = 5000
#: fragment-edge blocks read (and aggregated) at a time: bounds the rows held at once
_BLOCKS_PER_READ = 16
#: lookup rows the components step writes per store call
_WRITE_CHUNK = 250_000


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

    def _blocks_to_read(self, lo: np.ndarray, hi: np.ndarray, owned_only: bool = False) -> list[str]:
        """Blocks whose fragment-edge contributions can hold edges this region needs.

        An edge ``(p, p + o)`` is stored by the block of its owner voxel ``p`` and
        fragments never leave their block, so a block outside the region can hold an
        edge with an end inside it only if it lies on the side of ``-o``: along axis
        ``a``, below the region only if some offset has ``o_a > 0``, above it only if
        some has ``o_a < 0`` (offsets reach less than a block).  Reading just those
        neighbours instead of the whole ring reads the same rows that survive the
        region filter below (with the paper's offsets, 36 instead of 64 blocks for a
        2x2x2 region).  ``owned_only``: just the blocks in [lo, hi) (a tile takes the edges
        its blocks own, whichever tile their ends lie in)."""
        offs = np.asarray(self._edge_offsets(), np.int64).reshape(-1, 3)
        below = (offs > 0).any(axis=0).astype(np.int64)
        above = (offs < 0).any(axis=0).astype(np.int64)
        if owned_only:
            below = above = np.zeros(3, np.int64)
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

    def _crossing_fragment_edges(self, lo: np.ndarray, hi: np.ndarray, owned_only: bool = False) -> EdgeTable:
        """Fragment edges this level needs, relabelled to the clusters of the level below.

        Read a few blocks at a time and aggregated as they come, so that memory follows
        the (much smaller) set of cluster pairs, not the rows on the faces.  ``owned_only``:
        the edges stored by the blocks in [lo, hi), wherever their ends lie (tiles)."""
        keys = self._blocks_to_read(lo, hi, owned_only)
        tables = []
        for start in range(0, len(keys), _BLOCKS_PER_READ):
            cols = self.store.find_arrays(
                "fragment_edges",
                {"graph": self.graph, "block": {"in": keys[start : start + _BLOCKS_PER_READ]}},
                fields=list(EDGE_FIELDS),
            )
            frag = EdgeTable.from_columns(cols)
            if len(frag) and not owned_only:
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


class AgglomerateTiles(AgglomerateLevel):
    """The last level of a large volume, decided per tile (``last_level_tile_blocks``).

    A tile takes the fragment edges its blocks own that cross between regions of the
    level below, relabelled to that level's open clusters, plus the edges those clusters
    passed up among themselves, and runs a plain graph MWS over them.  Every crossing
    edge belongs to one tile, so tiles run in parallel and each holds a graph bounded by
    its size; :class:`AgglomerateComponents` joins their merges.  Only used when the level
    below is local (its passed-up clusters all have an attractive edge out of their
    region, so each appears in a crossing edge)."""

    @property
    def stage_id(self) -> str:
        return f"{stage_prefix(self.graph)}agglomerate_L{self.level}_tiles"

    @property
    def block_shape(self):
        return as_vec3(b * t for b, t in zip(self.seg_block, self.cfg.agglomerate.last_level_tile_blocks))

    @property
    def context(self):
        # the ends of an owned edge lie within one block of the tile, and their clusters
        # (lookups and passed-up edges of the level below) belong to the regions there
        return self.seg_block

    @property
    def local(self) -> bool:
        return True

    def _edges_among(self, nodes: np.ndarray) -> EdgeTable:
        """Edges the level below passed up between two of ``nodes`` (sorted)."""
        tables = []
        for start in range(0, len(nodes), _IN_CHUNK):
            cols = self.store.find_arrays(
                "level_edges",
                {"graph": self.graph, "level": self.level - 1, "u": {"in": nodes[start : start + _IN_CHUNK].tolist()}},
                fields=list(EDGE_FIELDS),
            )
            rows = EdgeTable.from_columns(cols)
            pos = np.minimum(np.searchsorted(nodes, rows.v), len(nodes) - 1)
            tables.append(rows.take(nodes[pos] == rows.v))
        return EdgeTable.concat(tables)

    def process(self, block: BlockInfo):
        lo, hi = self._region_block_range(block)
        crossing = self._crossing_fragment_edges(lo, hi, owned_only=True)
        nodes = np.unique(np.concatenate([crossing.u, crossing.v]))
        edges = EdgeTable.concat([crossing, self._edges_among(nodes)]).aggregate()
        # the local rule over a region holding every node: a plain MWS of the tile's graph
        reps, _ = self._cluster(nodes, np.ones(len(nodes), bool), edges)
        changed = reps != nodes
        n = int(changed.sum())
        self.graph_size = {"nodes": int(len(nodes)), "edges": int(len(edges)), "merged_nodes": n}
        self.store.put(
            "tile_merges",
            {"graph": [self.graph] * n, "level": [self.level] * n, "region": [block.key] * n,
             "node": nodes[changed], "parent": reps[changed]},
            replace_where={"graph": self.graph, "level": self.level, "region": block.key},
        )
        return None


class AgglomerateComponents(AgglomerateLevel):
    """Joins the tiles' merges: connected components over the merged clusters, written
    as the last level's lookups (node -> smallest id of its component).  Reads the tiles'
    merges a few tiles at a time, twice (ids, then unions), and holds 8 bytes per merged
    cluster for the ids and 8 for the union-find (roots computed in place, lookups
    written in slices), ~16 while collecting the ids (benchmarks/components_memory.py
    measures it).  The whole-volume graph it replaces needed ~2-4 KB per node
    (docs/scale.md)."""

    def _tile_keys(self) -> list[str]:
        grid = AgglomerateTiles(self.run, self.graph, self.level, self.levels).grid_shape
        return [block_key(i) for i in itertools.product(*(range(g) for g in grid))]

    def _merge_chunks(self, keys: list[str]):
        for start in range(0, len(keys), _BLOCKS_PER_READ):
            cols = self.store.find_arrays(
                "tile_merges",
                {"graph": self.graph, "level": self.level, "region": {"in": keys[start : start + _BLOCKS_PER_READ]}},
                fields=["node", "parent"],
            )
            yield np.asarray(cols["node"], np.int64), np.asarray(cols["parent"], np.int64)

    def process(self, block: BlockInfo):
        from ..union_find import UnionFind

        keys = self._tile_keys()
        chunks: list[np.ndarray] = []
        pairs = 0
        for node, parent in self._merge_chunks(keys):
            chunks.append(np.unique(np.concatenate([node, parent])))
            pairs += len(node)
        # one concatenation, an in-place sort and a mask: ~16 bytes per id at the peak
        # (np.unique of the whole would copy and sort it again)
        ids = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        del chunks
        ids.sort()
        if len(ids):
            first = np.empty(len(ids), bool)
            first[0] = True
            np.not_equal(ids[1:], ids[:-1], out=first[1:])
            ids = ids[first]
            del first
        uf = UnionFind(len(ids))
        for node, parent in self._merge_chunks(keys):
            uf.union(np.searchsorted(ids, node), np.searchsorted(ids, parent))
        roots = uf.roots()
        self.graph_size = {"nodes": int(len(ids)), "edges": pairs}
        # written in slices, so that neither the store's per-row objects nor the index
        # arrays ever exist for all clusters; the first slice's replace_where drops a
        # previous attempt's rows, the rest append
        for start in range(0, max(len(ids), 1), _WRITE_CHUNK):
            stop = min(start + _WRITE_CHUNK, len(ids))
            part = start + np.flatnonzero(roots[start:stop] != np.arange(start, stop))
            n = len(part)
            self.store.put(
                "lookups",
                {"graph": [self.graph] * n, "level": [self.level] * n, "node": ids[part],
                 "parent": ids[roots[part]], "region": [block.key] * n},
                replace_where={"graph": self.graph, "level": self.level, "region": block.key} if start == 0 else None,
            )
        return None


def tiled_last_level(run: RunContext, graph: str, levels: int) -> bool:
    """Whether the last level runs as tiles + components (see :class:`AgglomerateTiles`)."""
    tile = run.cfg.agglomerate.last_level_tile_blocks
    if graph != "mws" or tile is None or levels < 2:
        return False
    # (one tile covering the volume gives exactly the untiled result: tests rely on it)
    return AgglomerateLevel(run, graph, levels - 1, levels).local


def stages(run: RunContext, graph: str) -> list[Stage]:
    seg_block = run.cfg.segment.block_shape_vox
    grid = grid_shape(run.volume_roi.shape, seg_block)
    levels = num_levels(grid, run.cfg.agglomerate.fanout)
    out: list[Stage] = [AgglomerateLevel(run, graph, level, levels) for level in range(1, levels)]
    if tiled_last_level(run, graph, levels):
        out += [AgglomerateTiles(run, graph, levels, levels), AgglomerateComponents(run, graph, levels, levels)]
    else:
        out.append(AgglomerateLevel(run, graph, levels, levels))
    return out
