"""Graph-level Mutex Watershed with regions and freezing, and edge-list helpers.

Nodes are ``0 .. num_nodes - 1`` (callers map fragment ids to indices, e.g. with
``np.unique``).  Edges ``(u, v)`` carry a uint64 key (processing order: key
descending) and a type.  Fragment-level edges are built by taking, for every fragment
pair and edge type, the **maximum key** over its voxel edges: the MWS of a contracted
multigraph only ever acts on the first edge between two clusters, and pre-merging
fragments that the global MWS builds by the same merges does not change its result,
so the graph MWS over fragments equals the voxel MWS.

Region mode: ``node_inside`` marks the region.  An edge with both endpoints inside is
internal, one with one endpoint inside is a cross edge (its outside endpoint is never
merged), edges with both endpoints outside are ignored.  The freezing rules are those
of the voxel kernel, so applying this level by level (regions of regions) is exact.

Local mode (:func:`local_region_clusters`): for regions too large for the exact rules
(whose frozen clusters grow with the region's volume), a plain MWS over the region;
approximate, with the graph a region passes up bounded by its surface.
"""

from __future__ import annotations

import numpy as np

from .kernels import _graph_kernel


def _as_edges(u, v, keys, is_attractive):
    u = np.ascontiguousarray(u, dtype=np.int64).reshape(-1)
    v = np.ascontiguousarray(v, dtype=np.int64).reshape(-1)
    keys = np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1)
    att = np.ascontiguousarray(is_attractive, dtype=np.bool_).reshape(-1)
    if not (u.size == v.size == keys.size == att.size):
        raise ValueError("u, v, keys and is_attractive must have the same length")
    return u, v, keys, att


def graph_mutex_watershed(num_nodes, u, v, keys, is_attractive, node_inside=None):
    """Graph MWS (region mode when ``node_inside`` is given).

    Returns ``(cluster, frozen)``: ``cluster`` (int64, num_nodes) is the smallest node
    index of each node's cluster (outside nodes: themselves); ``frozen`` (bool) tells
    whether the node's cluster is frozen (outside nodes: False).  Edges are processed by
    key descending (keys are unique per voxel edge, see :mod:`~embedseg_daisy.mws.keys`).
    """
    num_nodes = int(num_nodes)
    u, v, keys, att = _as_edges(u, v, keys, is_attractive)
    if u.size and (min(u.min(), v.min()) < 0 or max(u.max(), v.max()) >= num_nodes):
        raise ValueError("edge endpoints must lie in [0, num_nodes)")
    if node_inside is None:
        inside = np.ones(num_nodes, dtype=np.bool_)
    else:
        inside = np.ascontiguousarray(node_inside, dtype=np.bool_).reshape(-1)
        if inside.size != num_nodes:
            raise ValueError("node_inside must have num_nodes entries")
    order = np.argsort(keys, kind="stable")[::-1].astype(np.int64)
    return _graph_kernel(num_nodes, u, v, att, np.ascontiguousarray(order), inside)


def contract_edges(u, v, keys, is_attractive, mapping=None, drop=None):
    """Relabel, drop and max-aggregate an edge list.

    ``mapping`` (int array indexed by node, optional) relabels both endpoints; edges
    with an endpoint whose *original* node is marked in ``drop`` (bool array indexed by
    node) are removed, as are self-loops after relabelling.  Parallel edges are reduced
    to the maximum key per (min endpoint, max endpoint, type).  Returns
    ``(u, v, keys, is_attractive)`` with ``u < v``, sorted by (u, v, type).
    """
    u, v, keys, att = _as_edges(u, v, keys, is_attractive)
    if drop is not None:
        drop = np.asarray(drop, dtype=np.bool_)
        keep = ~(drop[u] | drop[v])
        u, v, keys, att = u[keep], v[keep], keys[keep], att[keep]
    if mapping is not None:
        mapping = np.asarray(mapping, dtype=np.int64)
        u = mapping[u]
        v = mapping[v]
    lo = np.minimum(u, v)
    hi = np.maximum(u, v)
    keep = lo != hi
    lo, hi, keys, att = lo[keep], hi[keep], keys[keep], att[keep]
    if lo.size == 0:
        return lo, hi, keys, att
    # sort by (lo, hi, type, key) and keep the last of each group
    order = np.lexsort((keys, att, hi, lo))
    lo, hi, keys, att = lo[order], hi[order], keys[order], att[order]
    last = np.ones(lo.size, dtype=np.bool_)
    last[:-1] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1]) | (att[1:] != att[:-1])
    return lo[last], hi[last], keys[last], att[last]


def upward_edges(u, v, keys, is_attractive, cluster, frozen, node_inside):
    """Edges of a region result that must travel to the next level.

    Keeps internal edges between two different frozen clusters and cross edges whose
    inside cluster is frozen; inside endpoints are relabelled to their cluster id,
    outside endpoints are kept; then max-aggregated per (pair, type).  Edges incident to
    an unfrozen cluster are dropped: such a cluster is final (all its edges have been
    processed and it never met an attractive cross edge).
    """
    u, v, keys, att = _as_edges(u, v, keys, is_attractive)
    cluster = np.asarray(cluster, dtype=np.int64)
    frozen = np.asarray(frozen, dtype=np.bool_)
    inside = np.asarray(node_inside, dtype=np.bool_)
    iu, iv = inside[u], inside[v]
    # an outside endpoint is "alive" here; an inside one must be frozen
    ok_u = ~iu | frozen[u]
    ok_v = ~iv | frozen[v]
    keep = (iu | iv) & ok_u & ok_v
    u, v, keys, att, iu, iv = u[keep], v[keep], keys[keep], att[keep], iu[keep], iv[keep]
    u = np.where(iu, cluster[u], u)
    v = np.where(iv, cluster[v], v)
    return contract_edges(u, v, keys, att)


def local_region_clusters(num_nodes, u, v, keys, is_attractive, region):
    """Local (approximate) decision for a region too large for the exact rules.

    Plain graph MWS over the region's nodes (edges leaving the region ignored): every
    merge it makes is committed.  A cluster is *open* when one of its nodes has an
    attractive edge to a node outside the region -- only open clusters can still merge,
    so they travel up a level; the others are final.  Returns ``(cluster, open)`` like
    :func:`graph_mutex_watershed` (cluster id: smallest node index; outside nodes:
    themselves, not open).
    """
    num_nodes = int(num_nodes)
    u, v, keys, att = _as_edges(u, v, keys, is_attractive)
    region = np.ascontiguousarray(region, dtype=np.bool_).reshape(-1)
    ru, rv = region[u], region[v]
    inner = ru & rv
    cluster, _ = graph_mutex_watershed(num_nodes, u[inner], v[inner], keys[inner], att[inner])
    leaving = att & (ru != rv)
    is_open = np.zeros(num_nodes, dtype=np.bool_)
    is_open[cluster[np.where(ru, u, v)[leaving]]] = True
    return cluster, is_open[cluster] & region
