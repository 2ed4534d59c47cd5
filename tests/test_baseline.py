"""Baseline watershed + mean-affinity agglomeration: conventions, toy answers, agreement."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from embedseg_daisy.baseline import (
    affinity_to_cost,
    fragment_graph_nn,
    hierarchical_mean_affinity,
    mean_affinity_agglomeration,
    mean_affinity_agglomeration_graph,
    mean_affinity_agglomeration_graph_thresholds,
    mean_affinity_merge_tree,
    watershed_fragments,
)
from embedseg_daisy.baseline.watershed import waterz_basins
from embedseg_daisy.evaluation import variation_of_information
from embedseg_daisy.offsets import BASELINE_NEAREST


def _affs_from_labels(labels: np.ndarray) -> np.ndarray:
    """Our convention: channel c at p = [labels[p] == labels[p - e_c]] (0 on the first slice)."""
    affs = np.zeros((3,) + labels.shape, np.float32)
    for c, off in enumerate(BASELINE_NEAREST):
        assert off[c] == -1 and sum(map(abs, off)) == 1
        cur = [slice(None)] * 3
        prev = [slice(None)] * 3
        cur[c] = slice(1, None)
        prev[c] = slice(None, -1)
        affs[c][tuple(cur)] = labels[tuple(cur)] == labels[tuple(prev)]
    return affs


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to relabelling (0 is a label like any other here)."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    pairs = np.unique(np.stack([ia.ravel(), ib.ravel()]), axis=1)
    return pairs.shape[1] == ia.max() + 1 == ib.max() + 1


def _boxes(shape=(6, 7, 8), cuts=(2, 5, 3)):
    """8 boxes: the cut along axis c lies between index cuts[c] - 1 and cuts[c]."""
    z, y, x = np.indices(shape)
    return (1 + (z >= cuts[0]) + 2 * (y >= cuts[1]) + 4 * (x >= cuts[2])).astype(np.uint64)


# ---------------------------------------------------------------------------
# waterz's convention, pinned
# ---------------------------------------------------------------------------


def test_waterz_watershed_convention_is_ours():
    gt = _boxes()
    affs = _affs_from_labels(gt)
    assert _same_partition(waterz_basins(affs), gt)
    frags = watershed_fragments(affs, size_threshold=0, dust=0)
    assert _same_partition(frags, gt)
    # what a wrong convention would give: visibly different partitions
    reversed_channels = np.ascontiguousarray(affs[::-1])
    assert not _same_partition(waterz_basins(reversed_channels), gt)
    forward = np.zeros_like(affs)  # the edge to the voxel one step *ahead*
    for c in range(3):
        cur = [slice(None)] * 3
        nxt = [slice(None)] * 3
        cur[c] = slice(None, -1)
        nxt[c] = slice(1, None)
        forward[c][tuple(cur)] = affs[c][tuple(nxt)]
    assert not _same_partition(waterz_basins(forward), gt)


def test_waterz_region_graph_convention_is_ours():
    gt = _boxes()
    # only the x cut is a boundary in the affinities; the fragments are the 8 boxes
    x_only = (1 + (np.indices(gt.shape)[2] >= 3)).astype(np.uint64)
    affs = _affs_from_labels(x_only)
    frags = gt.copy()
    ((t, seg),) = list(mean_affinity_agglomeration(affs, frags, [0.5]))
    assert t == 0.5
    assert _same_partition(seg, x_only)
    assert np.array_equal(frags, gt)  # the caller's fragments are untouched
    # read one step ahead, the x boundary would fall inside box pairs and merge all
    shifted = np.zeros_like(affs)
    shifted[2][..., 1:] = affs[2][..., :-1]
    shifted[:2] = affs[:2]
    ((_, seg_wrong),) = list(mean_affinity_agglomeration(shifted, gt, [0.5]))
    assert not _same_partition(seg_wrong, x_only)
    # the graph extraction reads the same edges
    ids, u, v, s, c = fragment_graph_nn(affs, gt)
    assert ids.tolist() == list(range(1, 9))
    mean = dict(zip(zip((ids[u]).tolist(), (ids[v]).tolist()), (s / c).tolist()))
    assert mean[(1, 5)] == 0.0 and mean[(1, 2)] == 1.0 and mean[(1, 3)] == 1.0
    assert c[(ids[u] == 1) & (ids[v] == 5)][0] == 2 * 5  # z 0..1 x y 0..4


# ---------------------------------------------------------------------------
# watershed toy with a known answer
# ---------------------------------------------------------------------------

# a line of 14 voxels; channel x at voxel i is the edge (i - 1, i)
_LINE = [0.9, 0.9, 0.9, 0.5, 0.95, 0.3, 0.9, 0.9, 0.9, 0.9, 0.005, 0.8, 0.001]
# steepest ascent: A = 0..3, B = 4..5, C = 6..10, D = 11..12, voxel 13 below T_min
# basin graph (max affinity): A-B 0.5, B-C 0.3, C-D 0.005 (< size_affinity)


def _line_affs():
    affs = np.zeros((3, 1, 1, 14), np.float32)
    affs[2, 0, 0, 1:] = _LINE
    return affs


@pytest.mark.parametrize(
    "size_threshold, dust, expected",
    [
        (0, 0, [1, 1, 1, 1, 5, 5, 7, 7, 7, 7, 7, 12, 12, 0]),  # plain watershed
        (3, 0, [1, 1, 1, 1, 1, 1, 7, 7, 7, 7, 7, 12, 12, 0]),  # B (2) < 3 joins A
        (3, 3, [1, 1, 1, 1, 1, 1, 7, 7, 7, 7, 7, 0, 0, 0]),  # D (2) is dust
        (6, 3, [1] * 11 + [0, 0, 0]),  # AB (6) and C (5): C < 6 joins
        (6, 6, [1] * 11 + [0, 0, 0]),
        (100, 12, [0] * 14),  # everything below the dust size
    ],
)
def test_watershed_size_threshold_and_dust(size_threshold, dust, expected):
    affs = _line_affs()
    before = affs.copy()
    out = watershed_fragments(affs, size_threshold=size_threshold, dust=dust)
    assert out.dtype == np.uint64
    assert out.ravel().tolist() == expected
    assert np.array_equal(affs, before)


def test_watershed_size_affinity_and_t_max():
    affs = _line_affs()
    # with size_affinity 0.001 the C-D edge (0.005) counts: D (2) joins C
    out = watershed_fragments(affs, size_threshold=3, size_affinity=0.001, dust=3)
    assert out.ravel().tolist() == [1] * 6 + [7] * 7 + [0]
    # T_max: edges >= t_max join plateaus; 0.5 >= 0.4 links A and B in step 1
    out = watershed_fragments(affs, t_max=0.4, size_threshold=0, dust=0)
    assert out.ravel().tolist() == [1] * 6 + [7] * 5 + [12, 12, 0]


def test_watershed_fragment_ids_are_first_voxel_raster_index():
    gt = _boxes()
    frags = watershed_fragments(_affs_from_labels(gt), size_threshold=0, dust=0)
    flat = frags.ravel()
    for fid in np.unique(flat):
        assert fid == np.flatnonzero(flat == fid)[0] + 1


# ---------------------------------------------------------------------------
# mean-affinity agglomeration
# ---------------------------------------------------------------------------


def test_maa_graph_hand_example():
    # 0-1 mean 0.9; 1-2 one edge 0.6; 0-2 three edges 0.2
    u, v = [0, 1, 0], [1, 2, 2]
    s, c = [0.9, 0.6, 0.6], [1, 1, 3]
    # after 0+1, the mean to 2 is (0.6 + 0.6) / 4 = 0.3: below 0.5
    assert mean_affinity_agglomeration_graph(3, u, v, s, c, 0.5).tolist() == [0, 0, 2]
    assert mean_affinity_agglomeration_graph(3, u, v, s, c, 0.3).tolist() == [0, 0, 0]
    assert mean_affinity_agglomeration_graph(3, u, v, s, c, 0.95).tolist() == [0, 1, 2]
    tree = mean_affinity_merge_tree(3, u, v, s, c)
    assert tree.a.tolist() == [0, 0] and tree.b.tolist() == [1, 2]
    assert tree.score == pytest.approx([0.9, 0.3])
    # duplicates are summed, self-loops dropped, direction does not matter
    assert mean_affinity_agglomeration_graph(
        3, [1, 0, 2, 2, 1], [0, 0, 1, 0, 1], [0.9, 5.0, 0.6, 0.6, 3.0], [1, 1, 1, 3, 1], 0.5
    ).tolist() == [0, 0, 2]


def test_maa_graph_ties_deterministic():
    # a star: node 0 with equal means to 1..4, and equal means among the leaves
    u = np.array([0, 0, 0, 0, 1, 2, 3])
    v = np.array([1, 2, 3, 4, 2, 3, 4])
    s = np.array([0.8, 0.8, 0.8, 0.8, 0.4, 0.4, 0.4])
    c = np.ones(7, np.int64)
    ref = mean_affinity_agglomeration_graph(5, u, v, s, c, 0.7)
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.permutation(7)
        flip = rng.random(7) < 0.5
        uu = np.where(flip, v[p], u[p])
        vv = np.where(flip, u[p], v[p])
        assert np.array_equal(mean_affinity_agglomeration_graph(5, uu, vv, s[p], c[p], 0.7), ref)
    # ties go to the lexicographically first pair: (0, 1) merges first; then
    # {0,1}-2 = (0.8 + 0.4) / 2 = 0.6 while {0,1}-3 and {0,1}-4 stay 0.8 (1 touches
    # neither): (0, 3) beats (0, 4); then {0,1,3}-4 = (0.8 + 0.4) / 2 = 0.6: stop
    assert ref.tolist() == [0, 0, 2, 0, 4]


def _noisy_volume(seed, shape=(12, 48, 48), n_objects=40, noise=0.1):
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    pts = rng.integers(0, shape, (n_objects, 3))
    seeds[tuple(pts.T)] = np.arange(1, n_objects + 1)
    # anisotropic Voronoi labels (z sections 3x thicker)
    _, idx = ndimage.distance_transform_edt(seeds == 0, sampling=(3, 1, 1), return_indices=True)
    labels = seeds[tuple(idx)]
    affs = _affs_from_labels(labels)
    affs = ndimage.gaussian_filter(affs, (0, 0.4, 0.8, 0.8)) + rng.normal(0, noise, affs.shape)
    return labels, np.clip(affs, 0, 1).astype(np.float32)


def test_maa_waterz_and_graph_agree():
    labels, affs = _noisy_volume(3)
    frags = watershed_fragments(affs, size_threshold=20, dust=5)
    frags_before = frags.copy()
    ids, u, v, s, c = fragment_graph_nn(affs, frags)
    assert len(ids) > 30
    tree = mean_affinity_merge_tree(len(ids), u, v, s, c)
    thresholds = [0.3, 0.5, 0.6, 0.7, 0.8]
    # keep away from ties with the float32 arithmetic of waterz
    thresholds = [a for a in thresholds if np.min(np.abs(tree.score - a)) > 1e-4]
    assert len(thresholds) >= 3
    results = list(mean_affinity_agglomeration(affs, frags, [affinity_to_cost(a) for a in thresholds]))
    assert [t for t, _ in results] == sorted(affinity_to_cost(a) for a in thresholds)
    assert len({id(seg) for _, seg in results}) == len(results)  # fresh arrays
    counts = set()
    for t, seg in results:
        a = 1.0 - t
        clusters = mean_affinity_agglomeration_graph(len(ids), u, v, s, c, a)
        seg_graph = np.zeros_like(frags)
        fg = frags > 0
        seg_graph[fg] = ids[clusters[np.searchsorted(ids, frags[fg])]]
        # same partition and the same ids (smallest fragment id per segment)
        assert np.array_equal(seg, seg_graph)
        assert np.array_equal(tree.cut(a), clusters)
        counts.add(len(np.unique(seg)))
    assert len(counts) >= 3  # the thresholds do cut different partitions
    assert np.array_equal(frags, frags_before)
    for a, clusters in mean_affinity_agglomeration_graph_thresholds(len(ids), u, v, s, c, thresholds):
        assert np.array_equal(clusters, mean_affinity_agglomeration_graph(len(ids), u, v, s, c, a))
    # and the pipeline is a reasonable segmentation of the toy labels
    best = min(variation_of_information(labels, seg).sum for _, seg in results)
    assert best < 0.5


def test_hierarchical_mean_affinity_is_exact():
    """Two levels (four regions, then the volume) reproduce the global greedy."""
    _, affs = _noisy_volume(4)
    frags = watershed_fragments(affs, size_threshold=20, dust=5)
    ids, u, v, s, c = fragment_graph_nn(affs, frags)
    n = len(ids)
    Y, X = frags.shape[1:]
    x0 = (ids - 1) % X
    y0 = (ids - 1) // X % Y
    region = (x0 >= X // 2).astype(int) + 2 * (y0 >= Y // 2)
    committed = frozen_any = 0
    for thr in (0.4, 0.55, 0.7):
        reference = mean_affinity_agglomeration_graph(n, u, v, s, c, thr)
        lookup = np.arange(n)
        for r in range(4):
            inside = region == r
            edges = inside[u] | inside[v]
            clusters, frozen = hierarchical_mean_affinity(n, u[edges], v[edges], s[edges], c[edges], inside, thr)
            assert not frozen[~inside].any()
            assert np.array_equal(clusters[~inside], np.flatnonzero(~inside))
            lookup[inside] = clusters[inside]
            frozen_any += int(frozen.any())
        committed += int((lookup != np.arange(n)).sum())
        top = mean_affinity_agglomeration_graph(n, lookup[u], lookup[v], s, c, thr)
        assert np.array_equal(top[lookup], reference)
        all_in, no_frozen = hierarchical_mean_affinity(n, u, v, s, c, np.ones(n, bool), thr)
        assert np.array_equal(all_in, reference) and not no_frozen.any()
    assert committed > 0 and frozen_any > 0
