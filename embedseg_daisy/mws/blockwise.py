"""In-memory blockwise MWS driver: region MWS per block, fragment graph, graph hierarchy.

A compact reference of what the pipeline does across stages (fragments →
fragment_edges → agglomerate), for tests and benchmarks; it keeps the whole volume in
memory.  :func:`blockwise_mutex_watershed` must give exactly the partition of
:func:`~embedseg_daisy.mws.voxel.mutex_watershed` on the whole volume.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..offsets import max_reach
from . import keys as K
from .graph import contract_edges, graph_mutex_watershed, local_region_clusters, upward_edges
from .voxel import mutex_watershed_region


@dataclass
class BlockwiseResult:
    labels: np.ndarray  # segment labels of the whole volume (0 = background)
    fragments: np.ndarray  # fragment labels of the whole volume
    fragment_ids: np.ndarray  # sorted fragment ids
    fragment_frozen: np.ndarray  # frozen flag per fragment id (level 0)
    stats: dict = field(default_factory=dict)


def voxel_fragment_edges(fragments, affs, offsets, attractive, foreground=None, tiebreak=K.DEFAULT_TIEBREAK):
    """All voxel edges between two different foreground fragments of a whole volume,
    max-aggregated per (fragment pair, type).  Returns (u, v, keys, is_attractive) with
    fragment *ids* as endpoints."""
    fragments = np.asarray(fragments)
    shape = fragments.shape
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 3)
    att = np.asarray(attractive, dtype=bool).reshape(-1)
    fg = np.ones(shape, bool) if foreground is None else np.asarray(foreground, bool)
    us, vs, ks, ts = [], [], [], []
    for k, off in enumerate(offs):
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        a = affs[k][src].astype(np.int64)
        prio = a if att[k] else 255 - a
        fu = fragments[src]
        fv = fragments[dst]
        m = (prio > 0) & fg[src] & fg[dst] & (fu != fv)
        idx = np.nonzero(m)
        g = [idx[ax] + src[ax].start for ax in range(3)]
        ks.append(K.edge_keys(prio[m].astype(np.uint8), k, g[0], g[1], g[2], shape, tiebreak))
        us.append(fu[m])
        vs.append(fv[m])
        ts.append(np.full(int(m.sum()), att[k]))
    return contract_edges(
        np.concatenate(us).astype(np.int64),
        np.concatenate(vs).astype(np.int64),
        np.concatenate(ks),
        np.concatenate(ts),
    )


def _grid(shape, block_shape):
    return tuple(-(-s // b) for s, b in zip(shape, block_shape))


def blockwise_mutex_watershed(
    affs,
    offsets,
    attractive,
    foreground=None,
    block_shape=(8, 32, 32),
    fanout=2,
    tiebreak=K.DEFAULT_TIEBREAK,
    context=(0, 0, 0),
    exact_region_vox=None,
) -> BlockwiseResult:
    """Exact blockwise MWS: region mode per block, then graph MWS over regions of
    ``fanout`` blocks per axis, level by level.

    ``exact_region_vox``: as the pipeline's ``agglomerate.exact_region_vox``, levels
    whose regions hold more voxels (all but the last) decide locally with
    :func:`~embedseg_daisy.mws.graph.local_region_clusters`; ``None`` keeps every
    level exact.

    The region of a block is the block grown by ``context`` (clipped to the volume);
    its array adds the offsets' reach.  Only the block's voxels are labelled; a fragment
    is final when its region cluster is unfrozen and lies inside the block."""
    affs = np.asarray(affs)
    shape = affs.shape[1:]
    fg = np.ones(shape, bool) if foreground is None else np.asarray(foreground, bool)
    reach = max_reach(np.asarray(offsets).reshape(-1, 3).tolist())
    grid = _grid(shape, block_shape)
    fragments = np.zeros(shape, np.uint64)
    ids_l, frz_l = [], []
    for bi in itertools.product(*(range(g) for g in grid)):
        lo = [b * s for b, s in zip(bi, block_shape)]
        hi = [min((b + 1) * s, n) for b, s, n in zip(bi, block_shape, shape)]
        rlo = [max(0, l - c) for l, c in zip(lo, context)]
        rhi = [min(n, h + c) for h, c, n in zip(hi, context, shape)]
        alo = [max(0, l - r) for l, r in zip(rlo, reach)]
        ahi = [min(n, h + r) for h, r, n in zip(rhi, reach, shape)]
        arr = tuple(slice(a, b) for a, b in zip(alo, ahi))
        inside = tuple(slice(l - a, h - a) for l, h, a in zip(rlo, rhi, alo))
        output = tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, alo))
        res = mutex_watershed_region(
            affs[(slice(None),) + arr], offsets, attractive, fg[arr], inside, alo, shape,
            tiebreak=tiebreak, output=output,
        )
        fragments[tuple(slice(l, h) for l, h in zip(lo, hi))] = res.labels
        ids_l.append(res.ids)
        frz_l.append(res.frozen)
    ids = np.concatenate(ids_l)
    frozen = np.concatenate(frz_l)
    order = np.argsort(ids)
    ids, frozen = ids[order], frozen[order]
    n = ids.size
    stats = {"fragments": int(n), "frozen_fragments": int(frozen.sum()), "levels": []}

    fu, fv, fk, fa = voxel_fragment_edges(fragments, affs, offsets, attractive, fg, tiebreak)
    u = np.searchsorted(ids, fu)
    v = np.searchsorted(ids, fv)
    # node -> block grid coordinates (from the fragment id: 1 + raster index of its first voxel)
    first = np.stack(np.unravel_index((ids - 1).astype(np.int64), shape), axis=1)
    node_block = first // np.asarray(block_shape)
    rep = np.arange(n, dtype=np.int64)  # node -> current cluster representative
    alive = frozen.copy()  # nodes that still take part (frozen representatives)
    u, v, fk, fa = contract_edges(u, v, fk, fa, drop=~alive)
    stats["fragment_edges"] = int(u.size)

    level = 0
    while True:
        level += 1
        span = fanout**level
        region = node_block // span
        rgrid = tuple(-(-g // span) for g in grid)
        rid = np.ravel_multi_index(tuple(region.T), rgrid) if n else np.zeros(0, np.int64)
        new_rep = np.arange(n, dtype=np.int64)
        still_frozen = np.zeros(n, bool)
        up = []
        for r in np.unique(rid[alive]):
            inside = alive & (rid == r)
            m = inside[u] | inside[v]
            eu, ev, ek, ea = u[m], v[m], fk[m], fa[m]
            if exact_region_vox is not None and np.prod(block_shape) * span**3 > exact_region_vox:
                cluster, frz = local_region_clusters(n, eu, ev, ek, ea, inside)
            else:
                cluster, frz = graph_mutex_watershed(n, eu, ev, ek, ea, inside)
            new_rep[inside] = cluster[inside]
            still_frozen[inside] = frz[inside]
            up.append(upward_edges(eu, ev, ek, ea, cluster, frz, inside))
        rep = new_rep[rep]
        stats["levels"].append({"regions": int(np.unique(rid[alive]).size), "edges": int(u.size),
                                "nodes": int(alive.sum())})
        final = ~still_frozen
        alive = still_frozen & (new_rep == np.arange(n))
        if not up or np.prod(rgrid) == 1:
            break
        u, v, fk, fa = contract_edges(
            np.concatenate([x[0] for x in up]),
            np.concatenate([x[1] for x in up]),
            np.concatenate([x[2] for x in up]),
            np.concatenate([x[3] for x in up]),
            mapping=new_rep,
            drop=final,
        )
    # segment id = smallest fragment id of the cluster
    seg_of_node = ids[rep]
    labels = np.zeros(shape, np.uint64)
    nz = fragments != 0
    labels[nz] = seg_of_node[np.searchsorted(ids, fragments[nz])]
    return BlockwiseResult(labels, fragments, ids, frozen, stats)
