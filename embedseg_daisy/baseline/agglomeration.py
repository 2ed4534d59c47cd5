"""Mean-affinity agglomeration (MAA) of watershed fragments (paper Fig. S10b, [18]).

Greedy: repeatedly merge the pair of adjacent clusters with the highest *mean
affinity* -- the sum over all nearest-neighbour voxel edges between the two clusters
divided by their number, updated as clusters merge -- while it is >= a threshold.
Merging never raises a mean above the score of the merge that changed it, so the
merge scores are non-increasing and every threshold is a prefix of one run
(:func:`mean_affinity_merge_tree`).

Thresholds: affinities vs waterz costs
--------------------------------------
Our functions take an **affinity threshold** ``a``: merge while ``mean >= a``.
waterz (and :func:`mean_affinity_agglomeration`, which wraps it) takes **costs**
``t``: its score is ``1 - mean`` and it merges while ``1 - mean < t``, i.e. while
``mean > 1 - t``.  So ``t = 1 - a`` (:func:`affinity_to_cost`,
:func:`cost_to_affinity`); the two agree except for a mean exactly equal to the
threshold (>= here, > in waterz), and waterz accumulates means in float32.

Ties (equal means) are broken deterministically: the edge whose smallest
constituent input pair ``(u, v)`` comes first lexicographically wins.  This depends
only on which input edges two clusters share, not on the processing order.

Cluster ids: a cluster is named by its smallest node index; volumes use the smallest
fragment id of a segment (the package convention).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numba
import numpy as np
from numba import types
from numba.typed import Dict

from .watershed import check_affinities_nn

__all__ = [
    "MergeTree",
    "affinity_to_cost",
    "cost_to_affinity",
    "fragment_graph_nn",
    "hierarchical_mean_affinity",
    "mean_affinity_agglomeration",
    "mean_affinity_agglomeration_graph",
    "mean_affinity_agglomeration_graph_thresholds",
    "mean_affinity_merge_tree",
]


def affinity_to_cost(a):
    """waterz cost threshold for an affinity threshold: ``1 - a``."""
    return 1.0 - np.asarray(a, np.float64) if np.ndim(a) else 1.0 - float(a)


def cost_to_affinity(t):
    """Affinity threshold for a waterz cost threshold: ``1 - t``."""
    return 1.0 - np.asarray(t, np.float64) if np.ndim(t) else 1.0 - float(t)


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels mapped to 0..n (0 stays 0, others 1..n in increasing order), ids).

    ``ids[k - 1]`` is the original label of consecutive label ``k``.  Uses a lookup
    table when the largest label is not much larger than the volume, np.unique
    otherwise.
    """
    flat = np.asarray(labels).reshape(-1)
    if flat.size == 0:
        return np.zeros(labels.shape, np.uint64), np.zeros(0, np.uint64)
    if flat.dtype.kind == "i" and flat.min() < 0:
        raise ValueError("fragment ids must be non-negative")
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:
        present = np.zeros(top + 1, bool)
        present[flat] = True
        present[0] = False
        ids = np.flatnonzero(present).astype(np.uint64)
        lut = np.zeros(top + 1, np.uint64)
        lut[ids.astype(np.int64)] = np.arange(1, ids.size + 1, dtype=np.uint64)
        return lut[flat].reshape(labels.shape), ids
    uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq[0] == 0:
        out = inverse.astype(np.uint64)
        ids = uniq[1:]
    else:
        out = inverse.astype(np.uint64) + np.uint64(1)
        ids = uniq
    return out.reshape(labels.shape), ids.astype(np.uint64)


def fragment_graph_nn(affs_nn, fragments) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fragment adjacency with nearest-neighbour affinity sums (our convention).

    Returns ``(node_ids, u, v, aff_sum, aff_count)``: ``node_ids`` are the sorted
    non-zero fragment ids (uint64); ``u < v`` index into them (int64); ``aff_sum``
    (float64) and ``aff_count`` (int64) sum the affinities of all voxel edges
    between the two fragments.  Background (0) has no edges.
    """
    affs = check_affinities_nn(affs_nn)
    fragments = np.asarray(fragments)
    if fragments.shape != affs.shape[1:]:
        raise ValueError(f"fragments must have the shape {affs.shape[1:]}, not {fragments.shape}")
    cons, ids = _consecutive(fragments)
    cons = cons.astype(np.int64)
    n = ids.size
    keys, weights = [], []
    for c in range(3):
        cur = [slice(None)] * 3
        prev = [slice(None)] * 3
        cur[c] = slice(1, None)
        prev[c] = slice(None, -1)
        a = cons[tuple(cur)]
        b = cons[tuple(prev)]
        m = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[m], b[m]) - 1
        hi = np.maximum(a[m], b[m]) - 1
        keys.append(lo * n + hi)
        weights.append(affs[c][tuple(cur)][m].astype(np.float64))
    key = np.concatenate(keys)
    w = np.concatenate(weights)
    uk, inv = np.unique(key, return_inverse=True)
    aff_sum = np.bincount(inv, weights=w, minlength=uk.size).astype(np.float64)
    aff_count = np.bincount(inv, minlength=uk.size).astype(np.int64)
    return ids, uk // max(n, 1), uk % max(n, 1), aff_sum, aff_count


# ---------------------------------------------------------------------------
# whole volume, through waterz
# ---------------------------------------------------------------------------


def mean_affinity_agglomeration(affs_nn, fragments, thresholds: Iterable[float]) -> Iterator[tuple[float, np.ndarray]]:
    """waterz mean-affinity agglomeration of ``fragments``, one segmentation per threshold.

    ``thresholds`` are waterz **costs**: a pair merges while ``1 - mean affinity <
    t`` (use :func:`affinity_to_cost` for an affinity threshold).  Yields
    ``(t, segmentation)`` in increasing ``t``; each segmentation is a fresh uint64
    array whose segment ids are the smallest fragment id they contain (0 stays 0).
    Neither ``affs_nn`` nor ``fragments`` is modified (waterz works on a relabelled
    copy, which it overwrites).  Affinities as in :mod:`.watershed` (waterz's
    convention is ours).
    """
    import waterz

    affs = check_affinities_nn(affs_nn)
    fragments = np.asarray(fragments)
    if fragments.shape != affs.shape[1:]:
        raise ValueError(f"fragments must have the shape {affs.shape[1:]}, not {fragments.shape}")
    thresholds = sorted(float(t) for t in thresholds)
    if not thresholds:
        return
    # consecutive ids: waterz allocates per-id tables up to the largest id
    cons, ids = _consecutive(fragments)
    n = ids.size
    flat = cons.reshape(-1)
    # one voxel of every fragment, to read its root after each threshold
    seen = np.zeros(n + 1, np.int64) - 1
    seen[flat[::-1]] = np.arange(flat.size - 1, -1, -1)
    probe = seen[1:]
    for t, seg in zip(thresholds, waterz.agglomerate(affs, thresholds, fragments=cons)):
        root = seg.reshape(-1)[probe].astype(np.int64)  # root (consecutive id) of fragment k + 1
        # smallest fragment per root: fragments are in increasing id order
        uroot, first = np.unique(root, return_index=True)
        lut = np.zeros(n + 1, np.uint64)
        lut[uroot] = ids[first]
        yield t, lut[seg]


# ---------------------------------------------------------------------------
# graph version (numba)
# ---------------------------------------------------------------------------


def _canonical_edges(num_nodes, u, v, aff_sum, aff_count):
    u = np.asarray(u, np.int64).ravel()
    v = np.asarray(v, np.int64).ravel()
    s = np.asarray(aff_sum, np.float64).ravel()
    c = np.asarray(aff_count, np.int64).ravel()
    if not (u.size == v.size == s.size == c.size):
        raise ValueError("u, v, aff_sum and aff_count must have the same length")
    num_nodes = int(num_nodes)
    if num_nodes < 0 or num_nodes >= 3_000_000_000:
        raise ValueError(f"num_nodes must be in [0, 3e9), not {num_nodes}")
    if u.size and (min(u.min(), v.min()) < 0 or max(u.max(), v.max()) >= num_nodes):
        raise ValueError("edge endpoints must be node indices in [0, num_nodes)")
    if (c < 0).any():
        raise ValueError("aff_count must be non-negative")
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    keep = (lo != hi) & (c > 0)
    lo, hi, s, c = lo[keep], hi[keep], s[keep], c[keep]
    key = lo * num_nodes + hi
    uk, inv = np.unique(key, return_inverse=True)
    s = np.bincount(inv, weights=s, minlength=uk.size)
    c = np.bincount(inv, weights=c, minlength=uk.size).astype(np.int64)
    n = max(num_nodes, 1)
    return num_nodes, uk // n, uk % n, s, c


@numba.njit(cache=True, inline="always")
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _maa_core(n, eu, ev, esum, ecount, inside, threshold):
    """Greedy mean-affinity agglomeration with optional freezing.

    ``eu < ev`` unique, sorted by (eu, ev) (the index is the tie-break rank).  Nodes
    with ``inside`` False never merge; an edge to such a node, once reached in the
    order, freezes the inside cluster.  Returns (merge_a, merge_b, merge_score,
    cluster min id per node, frozen per node).
    """
    E = eu.size
    parent = np.arange(n)
    minid = np.arange(n)
    frozen = np.zeros(n, np.bool_)
    head = np.full(n, -1, np.int64)
    tail = np.full(n, -1, np.int64)
    length = np.zeros(n, np.int64)
    nxt = np.full(2 * E, -1, np.int64)
    alive = np.ones(E, np.bool_)
    version = np.zeros(E, np.int64)
    tie = np.arange(E)
    s = esum.copy()
    c = ecount.copy()
    pairs = Dict.empty(key_type=types.int64, value_type=types.int64)
    heap = [(0.0, np.int64(0), np.int64(0), np.int64(0))]
    heap.pop()
    for e in range(E):
        a = eu[e]
        b = ev[e]
        for side in range(2):
            node = a if side == 0 else b
            slot = 2 * e + side
            if head[node] == -1:
                head[node] = slot
            else:
                nxt[tail[node]] = slot
            tail[node] = slot
            length[node] += 1
        pairs[a * n + b] = e
        if not (inside[a] or inside[b]):
            alive[e] = False
            continue
        m = s[e] / c[e]
        if m >= threshold:
            heap.append((-m, tie[e], np.int64(e), np.int64(0)))
    heapq.heapify(heap)

    ma = np.empty(n, np.int64)
    mb = np.empty(n, np.int64)
    ms = np.empty(n, np.float64)
    nm = 0
    while len(heap) > 0:
        negm, _, e, ver = heapq.heappop(heap)
        if not alive[e] or ver != version[e]:
            continue
        ra = _find(parent, eu[e])
        rb = _find(parent, ev[e])
        if not (inside[ra] and inside[rb]):
            # an edge leaving the region: the inside cluster may merge outside first
            if inside[ra]:
                frozen[ra] = True
            if inside[rb]:
                frozen[rb] = True
            continue
        if frozen[ra] or frozen[rb]:
            # deferred: its outcome depends on material outside the region
            frozen[ra] = True
            frozen[rb] = True
            continue
        ma[nm] = minid[ra]
        mb[nm] = minid[rb]
        ms[nm] = -negm
        nm += 1
        alive[e] = False
        pairs.pop(min(ra, rb) * n + max(ra, rb))
        if length[ra] < length[rb]:
            small, big = ra, rb
        else:
            small, big = rb, ra
        parent[small] = big
        minid[big] = min(minid[ra], minid[rb])
        slot = head[small]
        while slot != -1:
            e2 = slot >> 1
            if alive[e2]:
                x = ev[e2] if (slot & 1) == 0 else eu[e2]
                w = _find(parent, x)
                pairs.pop(min(small, w) * n + max(small, w))
                k2 = min(big, w) * n + max(big, w)
                if k2 in pairs:
                    e3 = pairs[k2]
                    s[e3] += s[e2]
                    c[e3] += c[e2]
                    if tie[e2] < tie[e3]:
                        tie[e3] = tie[e2]
                    alive[e2] = False
                    version[e3] += 1
                    m3 = s[e3] / c[e3]
                    if m3 >= threshold:
                        heapq.heappush(heap, (-m3, tie[e3], e3, version[e3]))
                else:
                    pairs[k2] = e2
            slot = nxt[slot]
        if head[small] != -1:
            if head[big] == -1:
                head[big] = head[small]
            else:
                nxt[tail[big]] = head[small]
            tail[big] = tail[small]
        length[big] += length[small]

    clusters = np.empty(n, np.int64)
    frozen_nodes = np.empty(n, np.bool_)
    for i in range(n):
        r = _find(parent, i)
        clusters[i] = minid[r]
        frozen_nodes[i] = frozen[r]
    return ma[:nm], mb[:nm], ms[:nm], clusters, frozen_nodes


@numba.njit(cache=True, nogil=True)
def _cut(n, ma, mb, ms, threshold):
    parent = np.arange(n)
    minid = np.arange(n)
    for k in range(ma.size):
        if ms[k] < threshold:
            break
        ra = _find(parent, ma[k])
        rb = _find(parent, mb[k])
        if ra == rb:
            continue
        parent[rb] = ra
        minid[ra] = min(minid[ra], minid[rb])
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = minid[_find(parent, i)]
    return out


@dataclass(frozen=True)
class MergeTree:
    """The merges of one greedy run, in order: clusters ``a[k]`` and ``b[k]`` (each
    named by its smallest node index at that moment) merged with mean affinity
    ``score[k]`` (non-increasing up to float rounding)."""

    num_nodes: int
    a: np.ndarray
    b: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(self.a.size)

    def cut(self, threshold: float) -> np.ndarray:
        """Cluster id (smallest node index) per node after the merges with score >= threshold.

        Identical to :func:`mean_affinity_agglomeration_graph` at ``threshold``.
        """
        return _cut(self.num_nodes, self.a, self.b, self.score, float(threshold))


def mean_affinity_merge_tree(
    num_nodes: int, u, v, aff_sum, aff_count, *, min_threshold: float = float("-inf")
) -> MergeTree:
    """Run the greedy MAA once down to ``min_threshold`` and return its merge sequence.

    Edges: ``u[k], v[k]`` node indices in ``[0, num_nodes)`` with the sum and count
    of the voxel-edge affinities between them; duplicates are summed, self-loops and
    count-0 edges dropped.  Cut any threshold ``>= min_threshold`` with
    :meth:`MergeTree.cut`.
    """
    n, eu, ev, s, c = _canonical_edges(num_nodes, u, v, aff_sum, aff_count)
    if n == 0:
        z = np.zeros(0, np.int64)
        return MergeTree(0, z, z.copy(), np.zeros(0, np.float64))
    ma, mb, ms, _, _ = _maa_core(n, eu, ev, s, c, np.ones(n, np.bool_), float(min_threshold))
    return MergeTree(n, ma, mb, ms)


def mean_affinity_agglomeration_graph(num_nodes: int, u, v, aff_sum, aff_count, threshold: float) -> np.ndarray:
    """Greedy MAA on a fragment graph: int64 cluster id (smallest node index) per node.

    Merges the pair of clusters with the highest mean affinity (``sum / count`` over
    all their voxel edges) while it is ``>= threshold``; ties as in the module
    docstring.  Independent of waterz; agrees with :func:`mean_affinity_agglomeration`
    at cost ``1 - threshold`` up to ties and float32 rounding.
    """
    n, eu, ev, s, c = _canonical_edges(num_nodes, u, v, aff_sum, aff_count)
    if n == 0:
        return np.zeros(0, np.int64)
    return _maa_core(n, eu, ev, s, c, np.ones(n, np.bool_), float(threshold))[3]


def mean_affinity_agglomeration_graph_thresholds(
    num_nodes: int, u, v, aff_sum, aff_count, thresholds: Iterable[float]
) -> Iterator[tuple[float, np.ndarray]]:
    """``(threshold, cluster ids)`` for every affinity threshold, in decreasing order,
    from a single greedy run (each result equals the single-threshold function)."""
    thresholds = sorted((float(t) for t in thresholds), reverse=True)
    if not thresholds:
        return
    tree = mean_affinity_merge_tree(num_nodes, u, v, aff_sum, aff_count, min_threshold=thresholds[-1])
    for t in thresholds:
        yield t, tree.cut(t)


def hierarchical_mean_affinity(
    num_nodes: int, u, v, aff_sum, aff_count, inside, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy MAA of one region of the blockwise hierarchy, with freezing.

    ``inside[i]`` says whether node ``i`` belongs to the region; outside nodes never
    merge (edges between two outside nodes are ignored).  Edges are processed in the
    global greedy order (decreasing mean, ties as above); a cluster is *frozen* when
    an edge to an outside node is reached (globally it might merge with outside
    material first, changing its means), and an edge reaching a frozen cluster is
    deferred and freezes its other endpoint.  Merges between two unfrozen inside
    clusters are committed: the global greedy makes them too (a merge can only lower
    the means it touches, so an outside edge not yet reached cannot overtake).  Edges
    between frozen clusters are left for the next level.

    Returns ``(clusters, frozen)``: int64 cluster id (smallest node index) and bool
    frozen flag per node; outside nodes are their own unfrozen clusters.  With every
    node inside this is :func:`mean_affinity_agglomeration_graph`.
    """
    n, eu, ev, s, c = _canonical_edges(num_nodes, u, v, aff_sum, aff_count)
    inside = np.asarray(inside, np.bool_).ravel()
    if inside.size != n:
        raise ValueError(f"inside must have one flag per node ({n}), not {inside.size}")
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    _, _, _, clusters, frozen = _maa_core(n, eu, ev, s, c, inside, float(threshold))
    return clusters, frozen & inside
