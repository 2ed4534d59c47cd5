"""Graph-level MWS: engine vs a brute-force reference of the rules, mwatershed.cluster,
the voxel kernel, and the edge-list helpers."""

from __future__ import annotations

import numpy as np
import pytest

from embedseg_daisy.mws import (
    contract_edges,
    graph_mutex_watershed,
    local_region_clusters,
    mutex_watershed,
    mutex_watershed_region,
    upward_edges,
)


def same_partition(a, b) -> bool:
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def reference_region_mws(num_nodes, u, v, keys, att, inside):
    """Straight transcription of the MWS + freezing rules (dicts, no tricks)."""
    parent = list(range(num_nodes))
    frozen = [False] * num_nodes
    outside = [False] * num_nodes
    mutex: dict[frozenset, bool] = {}  # {root_a, root_b} -> certain

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    def union(a, b):
        parent[b] = a
        frozen[a] = frozen[a] or frozen[b]
        outside[a] = outside[a] or outside[b]
        for pair in [p for p in mutex if b in p]:
            (other,) = pair - {b}
            c = mutex.pop(pair)
            new = frozenset((a, other))
            mutex[new] = mutex.get(new, False) or c
        return a

    for e in np.argsort(keys, kind="stable")[::-1]:
        a, b, is_att = int(u[e]), int(v[e]), bool(att[e])
        if a == b or not (inside[a] or inside[b]):
            continue
        if inside[a] != inside[b]:
            r = find(a if inside[a] else b)
            if is_att:
                frozen[r] = True
            elif not frozen[r]:
                outside[r] = True
            continue
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        pair = frozenset((ra, rb))
        if not is_att:
            mutex[pair] = mutex.get(pair, False) or not (frozen[ra] and frozen[rb])
            continue
        if pair in mutex:
            continue
        if not frozen[ra] and not frozen[rb]:
            union(ra, rb)
        elif frozen[ra] and frozen[rb]:
            pass
        else:
            w, y = (ra, rb) if frozen[ra] else (rb, ra)
            ok = not outside[y]
            for p, _ in list(mutex.items()):
                if ok and y in p:
                    (f,) = p - {y}
                    if frozen[f] and not mutex.get(frozenset((w, f)), False):
                        ok = False
            if ok:
                union(w, y)
                frozen[w] = True
            else:
                frozen[y] = True
    roots = np.array([find(x) for x in range(num_nodes)])
    fr = np.array([bool(inside[x]) and frozen[roots[x]] for x in range(num_nodes)])
    return roots, fr


def random_graph(rng, n, m, p_att=0.6):
    u = rng.integers(0, n, m)
    v = rng.integers(0, n, m)
    keys = rng.permutation(np.arange(1, m + 1, dtype=np.uint64) * np.uint64(7919))
    att = rng.random(m) < p_att
    return u, v, keys, att


@pytest.mark.parametrize("seed", range(12))
def test_engine_matches_reference_rules(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    m = int(rng.integers(n, 6 * n))
    u, v, keys, att = random_graph(rng, n, m, p_att=rng.uniform(0.3, 0.8))
    inside = rng.random(n) < (1.0 if seed % 4 == 0 else 0.7)
    cluster, frozen = graph_mutex_watershed(n, u, v, keys, att, inside)
    roots, ref_frozen = reference_region_mws(n, u, v, keys, att, inside)
    assert same_partition(cluster, roots)
    assert np.array_equal(frozen, ref_frozen)
    # cluster id = smallest node of the cluster; outside nodes stay alone
    for c in np.unique(cluster):
        assert c == np.flatnonzero(cluster == c).min()
    assert np.all(cluster[~inside] == np.flatnonzero(~inside))


def test_engine_stress_many_mutexes():
    """Large random graph: exercises hash-set rebuilds, slot forwarding and stale list entries."""
    rng = np.random.default_rng(123)
    n, m = 3000, 40000
    u, v, keys, att = random_graph(rng, n, m, p_att=0.5)
    inside = rng.random(n) < 0.9
    cluster, frozen = graph_mutex_watershed(n, u, v, keys, att, inside)
    roots, ref_frozen = reference_region_mws(n, u, v, keys, att, inside)
    assert same_partition(cluster, roots)
    assert np.array_equal(frozen, ref_frozen)


@pytest.mark.parametrize("seed", range(4))
def test_plain_graph_matches_mwatershed_cluster(seed):
    mwatershed = pytest.importorskip("mwatershed")
    rng = np.random.default_rng(100 + seed)
    n, m = 400, 2000
    u, v, keys, att = random_graph(rng, n, m, p_att=0.5)
    cluster, frozen = graph_mutex_watershed(n, u, v, keys, att)
    assert not frozen.any()
    order = np.argsort(keys)[::-1]
    res = mwatershed.cluster([(bool(att[e]), int(u[e]), int(v[e])) for e in order])
    seg = np.arange(n) + n  # nodes without edges: singletons
    for node, s in res:
        seg[node] = s
    assert same_partition(cluster, seg)


def test_graph_on_voxel_edges_equals_voxel_kernel():
    """Graph MWS over the explicit voxel graph with the kernel's keys == voxel MWS."""
    from embedseg_daisy.mws.keys import edge_keys

    rng = np.random.default_rng(7)
    shape = (4, 10, 12)
    offsets = np.array([(0, 0, -1), (0, -1, 0), (-1, 0, 0), (0, -3, 0), (0, 0, -3), (-1, 2, -2)])
    att = np.array([1, 1, 1, 0, 0, 0], bool)
    affs = rng.integers(0, 256, (len(offsets),) + shape, dtype=np.uint8)
    labels = mutex_watershed(affs, offsets, att)
    idx = np.arange(np.prod(shape)).reshape(shape)
    us, vs, ks, ts = [], [], [], []
    for k, off in enumerate(offsets):
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        a = affs[k][src].astype(int)
        prio = a if att[k] else 255 - a
        m = prio > 0
        g = np.nonzero(m)
        ks.append(edge_keys(prio[m], k, g[0] + src[0].start, g[1] + src[1].start, g[2] + src[2].start, shape))
        us.append(idx[src][m])
        vs.append(idx[dst][m])
        ts.append(np.full(int(m.sum()), att[k]))
    cluster, _ = graph_mutex_watershed(idx.size, *(np.concatenate(x) for x in (us, vs, ks, ts)))
    assert same_partition(cluster, labels)


def test_region_graph_on_voxel_edges_equals_voxel_region():
    """Region mode of the graph kernel on voxel edges == voxel region mode (fragments and flags)."""
    from embedseg_daisy.mws.keys import edge_keys

    rng = np.random.default_rng(8)
    shape = (6, 14, 14)
    offsets = np.array([(0, 0, -1), (0, -1, 0), (-1, 0, 0), (0, -2, 0), (0, 0, -2), (-1, -2, 2)])
    att = np.array([1, 1, 1, 0, 0, 0], bool)
    affs = rng.integers(0, 256, (len(offsets),) + shape, dtype=np.uint8)
    inside = (slice(1, 5), slice(2, 12), slice(2, 12))
    res = mutex_watershed_region(affs, offsets, att, None, inside)
    idx = np.arange(np.prod(shape)).reshape(shape)
    node_inside = np.zeros(shape, bool)
    node_inside[inside] = True
    us, vs, ks, ts = [], [], [], []
    for k, off in enumerate(offsets):
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        a = affs[k][src].astype(int)
        prio = a if att[k] else 255 - a
        m = prio > 0
        g = np.nonzero(m)
        ks.append(edge_keys(prio[m], k, g[0] + src[0].start, g[1] + src[1].start, g[2] + src[2].start, shape))
        us.append(idx[src][m])
        vs.append(idx[dst][m])
        ts.append(np.full(int(m.sum()), att[k]))
    cluster, frozen = graph_mutex_watershed(idx.size, *(np.concatenate(x) for x in (us, vs, ks, ts)),
                                            node_inside.ravel())
    cl = cluster.reshape(shape)[inside]
    assert same_partition(cl, res.labels)
    frozen_by_label = dict(zip(res.ids.tolist(), res.frozen.tolist()))
    fr = frozen.reshape(shape)[inside]
    for lab, f in zip(res.labels.ravel().tolist(), fr.ravel().tolist()):
        assert frozen_by_label[lab] == f


def test_contract_edges_max_aggregates():
    u = np.array([0, 1, 0, 2, 2, 3, 1])
    v = np.array([1, 0, 1, 3, 3, 3, 0])
    k = np.array([5, 9, 7, 1, 4, 8, 2], np.uint64)
    a = np.array([1, 1, 0, 0, 0, 1, 0], bool)
    cu, cv, ck, ca = contract_edges(u, v, k, a)
    got = {(int(x), int(y), bool(t)): int(kk) for x, y, t, kk in zip(cu, cv, ca, ck)}
    assert got == {(0, 1, True): 9, (0, 1, False): 7, (2, 3, False): 4}  # (3, 3) is a self-loop
    cu, cv, ck, ca = contract_edges(u, v, k, a, mapping=np.array([0, 0, 2, 3]), drop=np.array([0, 0, 0, 1], bool))
    assert cu.size == 0  # (0,1) becomes a self-loop, everything at 3 is dropped


def test_upward_edges_keeps_frozen_and_cross_only():
    # nodes 0,1,2 inside; 3 outside.  0-1 merge (attractive), 1-3 attractive cross edge
    # freezes {0,1}; 2 has a mutex with 0 and stays unfrozen (final).
    u = np.array([0, 1, 2, 2, 0])
    v = np.array([1, 3, 0, 3, 3])
    keys = np.array([50, 40, 30, 20, 10], np.uint64)
    att = np.array([1, 1, 0, 0, 1], bool)
    inside = np.array([1, 1, 1, 0], bool)
    cluster, frozen = graph_mutex_watershed(4, u, v, keys, att, inside)
    assert cluster.tolist() == [0, 0, 2, 3]
    assert frozen.tolist() == [True, True, False, False]
    uu, vv, kk, aa = upward_edges(u, v, keys, att, cluster, frozen, inside)
    # 0-1 internal to a cluster: gone; 2-0 and 2-3 touch the final cluster 2: gone;
    # cross edges of cluster 0 to node 3: max per type
    assert list(zip(uu.tolist(), vv.tolist(), kk.tolist(), aa.tolist())) == [(0, 3, 40, True)]


def test_uncertain_mutex_stays_uncertain_through_merges():
    """A mutex between two frozen clusters is not certain, also after one of them absorbs
    a cluster with a longer mutex list (its pairs are then re-keyed)."""
    x, p, y, z, q1, q2, o1, o2 = range(8)
    edges = [  # (u, v, attractive), in processing order
        (z, p, False),  # certain: both unfrozen
        (x, o1, True),  # freezes x
        (p, o2, True),  # freezes p
        (x, p, False),  # x-p: both frozen -> not certain
        (y, q1, False),
        (y, q2, False),  # y's list is longer than x's
        (x, y, True),  # frozen x absorbs unfrozen y (partners q1, q2 unfrozen)
        (y, z, True),  # z's frozen partner p has no *certain* mutex with {x, y}: defer
    ]
    u = np.array([e[0] for e in edges])
    v = np.array([e[1] for e in edges])
    att = np.array([e[2] for e in edges])
    keys = np.arange(len(edges), 0, -1).astype(np.uint64) * np.uint64(10)
    inside = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    cluster, frozen = graph_mutex_watershed(8, u, v, keys, att, inside)
    assert cluster.tolist() == [0, 1, 0, 3, 4, 5, 6, 7]
    assert frozen.tolist() == [True, True, True, True, False, False, False, False]
    roots, ref_frozen = reference_region_mws(8, u, v, keys, att, inside)
    assert same_partition(cluster, roots) and np.array_equal(frozen, ref_frozen)


# ---------------------------------------------------------------- local rule (large regions)


@pytest.mark.parametrize("seed", range(6))
def test_local_rule_is_plain_mws_of_the_region(seed):
    """Region clusters are the plain MWS of the region's internal edges (edges leaving
    it ignored); a cluster is open iff one of its nodes has an attractive edge to a
    node outside the region."""
    rng = np.random.default_rng(200 + seed)
    n, m = 300, 1500
    u, v, keys, att = random_graph(rng, n, m, p_att=0.6)
    region = rng.random(n) < 0.5
    cluster, is_open = local_region_clusters(n, u, v, keys, att, region)

    keep = region[u] & region[v]
    plain, _ = graph_mutex_watershed(n, u[keep], v[keep], keys[keep], att[keep])
    idx = np.flatnonzero(region)
    assert same_partition(cluster[idx], plain[idx])
    for c in np.unique(cluster[idx]):
        assert c == idx[cluster[idx] == c].min()  # id: smallest node of the cluster
    assert np.all(cluster[~region] == np.flatnonzero(~region))
    leaving = att & (region[u] != region[v])
    inner = np.where(region[u], u, v)[leaving]
    expected_open = np.isin(cluster, cluster[inner]) & region
    assert np.array_equal(is_open, expected_open)
    assert is_open.any() and not is_open.all()


def test_local_rule_commits_what_the_exact_rule_defers():
    """Region {0, 1, 2}, outside {3}.  Order: 0-3 attractive (leaves), 1-3 attractive
    (leaves), 0-1 attractive, 2-3 repulsive (leaves).  The exact rule freezes 0 and 1 and
    defers their merge (outside, 3 might repel one of them); the local rule merges them
    and keeps the pair open, while 2, with only a repulsive edge out, is final."""
    u = np.array([0, 1, 0, 2])
    v = np.array([3, 3, 1, 3])
    keys = np.array([40, 30, 20, 10], np.uint64)
    att = np.array([True, True, True, False])
    region = np.array([True, True, True, False])
    exact, frozen = graph_mutex_watershed(4, u, v, keys, att, region)
    assert exact.tolist() == [0, 1, 2, 3] and frozen.tolist() == [True, True, False, False]
    cluster, is_open = local_region_clusters(4, u, v, keys, att, region)
    assert cluster.tolist() == [0, 0, 2, 3]
    assert is_open.tolist() == [True, True, False, False]
