"""Fragment-edges stage (CPU workers): voxel edges → fragment-pair contributions.

Every voxel edge ``(p, p + o)`` whose owner voxel ``p`` lies in the block's write ROI
and whose endpoints lie in two different foreground fragments contributes to the pair
``(u, v)``: its Mutex Watershed key (the same global key the fragments stage used; keys are
below 2**63, so they fit a signed 64-bit field) as attractive or
repulsive evidence, and on nearest-neighbour channels its affinity to the pair's
affinity sum and count (mean affinity for the baseline and for contacts).  Each
voxel edge is owned by exactly one block, so contributions add up exactly once; the
rows are keyed by block, so a re-run block replaces its own rows.
"""

from __future__ import annotations

import numpy as np
from funlib.geometry import Coordinate

from ..fragment_graph import EdgeTable
from ..geometry import as_vec3
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .common import GraphStage, dataset, grown, reach_of


def block_edge_table(
    frags: np.ndarray,
    frags_origin: tuple[int, int, int],
    affs: np.ndarray,
    write_begin: tuple[int, int, int],
    offsets,
    attractive,
    nearest: set[int],
    volume_shape: tuple[int, int, int],
    *,
    with_keys: bool = True,
) -> EdgeTable:
    """Contributions of the voxel edges owned by a block.

    ``frags`` covers the write box grown by the offsets' reach (clipped to the volume),
    its voxel ``[0,0,0]`` at global (volume-relative) ``frags_origin``; ``affs`` (uint8,
    ``(K, …)``) covers exactly the write box starting at global ``write_begin``."""
    from ..mws.keys import edge_keys

    shape = affs.shape[1:]
    vshape = np.asarray(volume_shape, np.int64)
    wb = np.asarray(write_begin, np.int64)
    fo = np.asarray(frags_origin, np.int64)
    tables = []
    for k, off in enumerate(offsets):
        nn = k in nearest
        if not with_keys and not nn:
            continue
        off = np.asarray(off, np.int64)
        # owner voxels p in the write box whose partner p + o lies inside the volume
        lo = np.maximum(0, -off - wb)
        hi = np.minimum(np.asarray(shape), vshape - off - wb)
        if np.any(hi <= lo):
            continue
        p_sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        fu_sl = tuple(slice(int(a + w - f), int(b + w - f)) for a, b, w, f in zip(lo, hi, wb, fo))
        fv_sl = tuple(slice(int(a + w + o - f), int(b + w + o - f)) for a, b, w, o, f in zip(lo, hi, wb, off, fo))
        a = affs[k][p_sl]
        fu = frags[fu_sl]
        fv = frags[fv_sl]
        prio = a if attractive[k] else (255 - a.astype(np.int16)).astype(np.uint8)
        valid = (fu != 0) & (fv != 0) & (fu != fv)
        if with_keys:
            valid &= prio > 0  # priority 0 never merges anything (dropped by the MWS too)
        idx = np.nonzero(valid)
        if len(idx[0]) == 0:
            continue
        u = fu[idx].astype(np.int64)
        v = fv[idx].astype(np.int64)
        n = len(u)
        if with_keys:
            g = [idx[ax] + lo[ax] + wb[ax] for ax in range(3)]
            keys = edge_keys(prio[idx], k, g[0], g[1], g[2], tuple(volume_shape)).astype(np.int64)
        else:
            keys = np.full(n, -1, np.int64)
        none = np.full(n, -1, np.int64)
        tables.append(
            EdgeTable(
                u=u,
                v=v,
                attr_key=keys if attractive[k] else none,
                rep_key=none if attractive[k] else keys,
                aff_sum=(a[idx].astype(np.float64) / 255.0) if nn else np.zeros(n),
                aff_count=np.ones(n, np.int64) if nn else np.zeros(n, np.int64),
            )
        )
    return EdgeTable.concat(tables).aggregate()


class FragmentEdges(GraphStage):
    name = "fragment_edges"
    section = "segment"

    @property
    def block_shape(self):
        return as_vec3(self.cfg.segment.block_shape_vox)

    def offsets(self):
        if self.graph == "mws":
            return self.cfg.offsets.all, self.cfg.offsets.attractive_mask, set(self.cfg.offsets.nearest_channels())
        from ..offsets import BASELINE_LONG_RANGE, BASELINE_NEAREST

        offs = list(BASELINE_NEAREST) + list(BASELINE_LONG_RANGE)
        return offs, [True] * 3 + [False] * len(BASELINE_LONG_RANGE), {0, 1, 2}

    @property
    def context(self):
        return reach_of(self.offsets()[0])

    def setup(self) -> None:
        from ..store import open_store

        self.store = open_store(self.cfg)
        self.frags = self.run.open_output(dataset(self.graph, "fragments"))
        self.affs = self.run.open_output(dataset(self.graph, "affinities"))

    def process(self, block: BlockInfo):
        vol = self.run.volume_roi
        offsets, attractive, nearest = self.offsets()
        read = grown(block.write_roi, self.context, vol)
        frags = self.frags.read(read)
        affs = self.affs.read(block.write_roi)
        table = block_edge_table(
            frags,
            tuple(Coordinate(read.begin) - Coordinate(vol.begin)),
            affs,
            tuple(Coordinate(block.write_roi.begin) - Coordinate(vol.begin)),
            offsets,
            attractive,
            nearest,
            tuple(vol.shape),
            with_keys=self.graph == "mws",
        )
        n = len(table)
        self.store.put(
            "fragment_edges",
            {"graph": [self.graph] * n, "block": [block.key] * n, **table.columns()},
            replace_where={"graph": self.graph, "block": block.key},
        )
        return {}


def stages(run: RunContext, graph: str) -> list[Stage]:
    return [FragmentEdges(run, graph)]
