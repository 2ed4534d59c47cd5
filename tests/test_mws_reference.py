"""The numba MWS against mwatershed (sign convention, exact partitions without ties,
VI with uint8 ties)."""

from __future__ import annotations

import numpy as np
import pytest

from embedseg_daisy.mws import mutex_watershed, mutex_watershed_region, mwatershed_reference, signed_weights
from embedseg_daisy.mws.synthetic import (
    embedding_affinities,
    label_affinities,
    random_affinities,
    voronoi_labels,
)
from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE

mwatershed = pytest.importorskip("mwatershed")

OFFSETS = np.array(PAPER_ATTRACTIVE + PAPER_REPULSIVE)
ATTRACTIVE = np.arange(len(OFFSETS)) < len(PAPER_ATTRACTIVE)


def same_partition(a, b) -> bool:
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def vi_nats(a, b) -> float:
    """Variation of information H(A|B) + H(B|A) in nats (all voxels, 0 is a label)."""
    _, ia = np.unique(np.asarray(a).ravel(), return_inverse=True)
    _, ib = np.unique(np.asarray(b).ravel(), return_inverse=True)
    n = ia.size

    def h(x):
        c = np.unique(x, return_counts=True)[1] / n
        return float(-(c * np.log(c)).sum())

    joint = ia.astype(np.int64) * (int(ib.max()) + 1) + ib
    return 2 * h(joint) - h(ia) - h(ib)


def two_objects_line():
    """1 x 1 x 6 line, objects {0,1,2} and {3,4,5}; channel 0 (0,0,-1) attractive,
    channel 1 (0,0,-2) repulsive.  The boundary edge 2-3 is weakly attractive (0.6) but
    the long-range edges across the boundary say 'different' (a = 0.05)."""
    offsets = np.array([(0, 0, -1), (0, 0, -2)])
    attractive = np.array([True, False])
    a = np.zeros((2, 1, 1, 6))
    a[0, 0, 0, 1:] = [0.9, 0.92, 0.6, 0.94, 0.96]  # edge (x, x-1)
    a[1, 0, 0, 2:] = [0.93, 0.05, 0.05, 0.97]  # edge (x, x-2): 2-0 same, 3-1 / 4-2 across, 5-3 same
    return a, offsets, attractive


def test_sign_convention_pinned_against_mwatershed():
    a, offsets, attractive = two_objects_line()
    truth = np.array([0, 0, 0, 1, 1, 1])
    # raw affinities on every channel: everything positive -> one object
    raw = mwatershed.agglom(np.ascontiguousarray(a, np.float64), offsets.tolist())
    assert len(np.unique(raw)) == 1
    # the paper's semantics (+a attractive, -(1-a) repulsive) separate the two objects
    ref = mwatershed_reference(a, offsets, attractive)
    assert same_partition(ref.ravel(), truth)
    w = signed_weights(a, offsets, attractive)
    assert w[0, 0, 0, 3] == pytest.approx(0.6) and w[1, 0, 0, 3] == pytest.approx(-0.95)
    # our kernel, float and uint8
    assert same_partition(mutex_watershed(a, offsets, attractive).ravel(), truth)
    a8 = np.rint(a * 255).astype(np.uint8)
    assert same_partition(mutex_watershed(a8, offsets, attractive).ravel(), truth)
    # repulsive channels read as attractive would merge everything
    assert len(np.unique(mutex_watershed(a8, offsets, np.array([True, True])))) == 1


def test_foreground_and_labels():
    rng = np.random.default_rng(0)
    shape = (4, 12, 12)
    affs = random_affinities(shape, len(OFFSETS), rng)
    fg = rng.random(shape) < 0.8
    labels = mutex_watershed(affs, OFFSETS, ATTRACTIVE, fg)
    assert labels.dtype == np.uint64 and labels.shape == shape
    assert np.all(labels[~fg] == 0) and np.all(labels[fg] > 0)
    # label = 1 + raster index of the cluster's first voxel
    flat = labels.ravel()
    for lab in np.unique(flat[flat > 0]):
        assert lab == 1 + np.flatnonzero(flat == lab).min()
    # an isolated foreground voxel is a singleton
    fg2 = np.zeros(shape, bool)
    fg2[1, 5, 5] = True
    assert np.count_nonzero(mutex_watershed(affs, OFFSETS, ATTRACTIVE, fg2)) == 1


@pytest.mark.parametrize("seed", range(4))
def test_identical_to_mwatershed_with_distinct_float_weights(seed):
    rng = np.random.default_rng(seed)
    shape = (8, 32, 32)
    if seed % 2:
        lab = voronoi_labels(shape, 12, rng)
        affs = label_affinities(lab, OFFSETS, rng, noise=0.3).astype(np.float64) / 255
        affs = np.clip(affs + rng.uniform(-1e-3, 1e-3, affs.shape), 0.0, 1.0)  # distinct values
        fg = lab > 0
    else:
        affs = random_affinities(shape, len(OFFSETS), rng, dtype=np.float64)
        fg = rng.random(shape) < 0.9 if seed else None
    ours = mutex_watershed(affs, OFFSETS, ATTRACTIVE, fg)
    ref = mwatershed_reference(affs, OFFSETS, ATTRACTIVE, fg)
    assert same_partition(ours, ref)
    # region mode over the whole array (no cross edges) is the plain MWS
    res = mutex_watershed_region(affs, OFFSETS, ATTRACTIVE, fg, (slice(None),) * 3)
    assert np.array_equal(res.labels, ours) and not res.frozen.any()


@pytest.mark.parametrize("tiebreak", ["raster", "tile", "hash"])
@pytest.mark.parametrize("seed", range(3))
def test_uint8_ties_vi_against_mwatershed(seed, tiebreak):
    rng = np.random.default_rng(10 + seed)
    shape = (16, 48, 48)
    lab = voronoi_labels(shape, 25, rng)
    fg = lab > 0
    if seed == 2:
        affs = embedding_affinities(lab, OFFSETS, rng, sigma=0.05)
    else:
        affs = label_affinities(lab, OFFSETS, rng, noise=0.1 + 0.05 * seed)
    ours = mutex_watershed(affs, OFFSETS, ATTRACTIVE, fg, tiebreak=tiebreak)
    ref = mwatershed_reference(affs, OFFSETS, ATTRACTIVE, fg)
    assert vi_nats(ours, ref) <= 1e-3
