"""Evaluation metrics: VI (order, units, GT-0 handling), adapted Rand, split/merge counts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error as sk_adapted_rand_error
from skimage.metrics import variation_of_information as sk_variation_of_information

from embedseg_daisy.evaluation import (
    adapted_rand_error,
    contingency_table,
    evaluate_segmentation,
    merge_split_plot,
    split_merge_counts,
    variation_of_information,
)


def _random_pair(seed, shape=(6, 20, 20), n_gt=7, n_seg=11):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, n_gt, shape).astype(np.uint64)
    seg = rng.integers(0, n_seg, shape).astype(np.uint32)
    return gt, seg


@pytest.mark.parametrize("seed", range(4))
def test_vi_matches_skimage_in_bits_and_nats(seed):
    gt, seg = _random_pair(seed)
    # skimage returns [H(seg|gt), H(gt|seg)] = [split, merge] in bits, gt first
    sk_split, sk_merge = sk_variation_of_information(gt.astype(np.int64), seg.astype(np.int64), ignore_labels=[0])
    bits = variation_of_information(gt, seg, log_base=2)
    assert bits.split == pytest.approx(sk_split, rel=1e-10, abs=1e-12)
    assert bits.merge == pytest.approx(sk_merge, rel=1e-10, abs=1e-12)
    nats = variation_of_information(gt, seg)
    assert nats.split == pytest.approx(sk_split * math.log(2), rel=1e-10)
    assert nats.merge == pytest.approx(sk_merge * math.log(2), rel=1e-10)
    assert nats.units == "nats" and bits.units == "bits"
    assert nats.sum == pytest.approx(nats.split + nats.merge)


def test_vi_order_pure_split_and_pure_merge():
    gt = np.zeros((2, 4, 8), np.uint64)
    gt[..., :4] = 1
    gt[..., 4:] = 2
    # split object 1 in half: only VI split grows
    seg = gt.copy()
    seg[:, :2, :4] = 7
    r = variation_of_information(gt, seg)
    assert r.merge == 0.0
    assert r.split == pytest.approx(0.5 * math.log(2))  # half the voxels, one bit each
    # merge objects 1 and 2: only VI merge grows
    r = variation_of_information(gt, np.ones_like(gt))
    assert r.split == 0.0
    assert r.merge == pytest.approx(math.log(2))
    assert variation_of_information(gt, gt) == variation_of_information(gt, gt + 5)
    assert variation_of_information(gt, gt).sum == 0.0


def test_vi_relabelling_invariance():
    gt, seg = _random_pair(11)
    rng = np.random.default_rng(5)
    # a bijection onto large uint64 ids (< 2**63), seg 0 included
    new_ids = rng.choice(2**62, size=int(seg.max()) + 1, replace=False).astype(np.uint64) + np.uint64(1)
    seg2 = new_ids[seg]
    gt_ids = np.arange(int(gt.max()) + 1, dtype=np.uint64)
    gt_ids[1:] = rng.permutation(gt_ids[1:]) * np.uint64(1000003)  # keep 0 as the ignored label
    gt2 = gt_ids[gt]
    a = variation_of_information(gt, seg)
    b = variation_of_information(gt2, seg2)
    assert b.split == pytest.approx(a.split, rel=1e-12)
    assert b.merge == pytest.approx(a.merge, rel=1e-12)
    assert adapted_rand_error(gt2, seg2).error == pytest.approx(adapted_rand_error(gt, seg).error, rel=1e-12)


def test_vi_gt_zero_ignored_and_seg_zero_counted():
    gt = np.zeros((1, 4, 6), np.uint32)
    gt[:, :, :3] = 1  # object 1; the rest is GT background
    seg = np.full(gt.shape, 3, np.uint64)
    base = variation_of_information(gt, seg)
    assert base.split == 0.0 and base.merge == 0.0
    # whatever the segmentation does on GT background does not count
    seg2 = seg.copy()
    seg2[:, :, 3:] = np.arange(12).reshape(1, 4, 3)
    assert variation_of_information(gt, seg2) == base
    # segment 0 inside a GT object is an ordinary segment: half the object -> 1 bit split
    seg3 = seg.copy()
    seg3[:, :2, :3] = 0
    r = variation_of_information(gt, seg3, log_base=2)
    assert r.split == pytest.approx(1.0)
    assert r.merge == 0.0
    # a custom ignore list
    gt4 = gt.copy()
    gt4[:, :, 3:] = 9
    assert variation_of_information(gt4, seg, ignore_gt=(0, 9)) == base
    assert variation_of_information(gt4, seg, ignore_gt=()).merge > 0
    with pytest.raises(ValueError):
        variation_of_information(np.zeros((2, 2), int), np.ones((2, 2), int))  # all GT ignored
    with pytest.raises(TypeError):
        variation_of_information(np.ones((2, 2)), np.ones((2, 2), int))
    with pytest.raises(ValueError):
        variation_of_information(gt, seg[:, :3])


def test_contingency_table_counts():
    gt = np.array([[1, 1, 1, 0, 2, 2]])
    seg = np.array([[4, 4, 5, 4, 5, 5]])
    t = contingency_table(gt, seg)
    assert t.gt_ids.tolist() == [1, 1, 2]
    assert t.seg_ids.tolist() == [4, 5, 5]
    assert t.counts.tolist() == [2, 1, 2]
    assert t.total == 5


def test_adapted_rand_hand_computed():
    # pure merge: gt sizes 4 and 2 in one segment of 6
    gt = np.array([1, 1, 1, 1, 2, 2])
    seg = np.ones(6, int)
    r = adapted_rand_error(gt, seg)
    # pairs (ordered, distinct): together in both 4*3 + 2*1 = 14; in seg 6*5 = 30; in gt 14
    assert r.precision == pytest.approx(14 / 30)
    assert r.recall == pytest.approx(1.0)
    assert r.error == pytest.approx(1 - 2 * (14 / 30) / (14 / 30 + 1))
    # pure split: the mirror image
    r = adapted_rand_error(seg, gt)
    assert r.precision == pytest.approx(1.0)
    assert r.recall == pytest.approx(14 / 30)
    # mixed, with an ignored GT voxel
    gt = np.array([1, 1, 1, 2, 2, 0])
    seg = np.array([1, 1, 2, 2, 2, 1])
    r = adapted_rand_error(gt, seg)
    # n_ij: (1,1)=2 (1,2)=1 (2,2)=2 -> 2+0+2 = 4; gt 3,2 -> 6+2 = 8; seg 2,3 -> 2+6 = 8
    assert (r.precision, r.recall, r.error) == pytest.approx((0.5, 0.5, 0.5))
    assert adapted_rand_error(gt, gt).error == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(3))
def test_adapted_rand_vs_skimage_swapped(seed):
    gt, seg = _random_pair(seed, n_gt=4, n_seg=6)
    gt = gt.astype(np.int64)
    seg = seg.astype(np.int64)
    are, sk_prec, sk_rec = sk_adapted_rand_error(gt, seg, ignore_labels=(0,))
    r = adapted_rand_error(gt, seg)
    assert r.error == pytest.approx(are, rel=1e-10)
    # skimage's "precision" is our recall and vice versa
    assert r.recall == pytest.approx(sk_prec, rel=1e-10)
    assert r.precision == pytest.approx(sk_rec, rel=1e-10)


def _toy_errors():
    gt = np.zeros((10, 10, 30), np.uint64)
    gt[:, :, :10] = 1  # A: 1000 voxels
    gt[:, :, 10:15] = 2  # B: 500
    gt[:, :, 15:20] = 3  # C: 500
    gt[:, :, 20:30] = 4  # D: 1000
    seg = np.zeros_like(gt)
    seg[:, :6, :10] = 11  # A split 600 / 400
    seg[:, 6:, :10] = 12
    seg[:, :, 10:20] = 13  # B + C merged
    seg[:, :, 20:30] = 14  # D, ...
    seg[0, 0, 5:10] = 14  # ... plus 5 voxels of jitter into A: not substantial
    seg[:, :, 29] = 0  # unassigned voxels of D: segment 0 is no object
    return gt, seg


def test_split_merge_counts_toy():
    gt, seg = _toy_errors()
    c = split_merge_counts(gt, seg, min_overlap_voxels=50, min_overlap_fraction=0.05)
    assert c.splits == 1 and c.split_objects == {1: [11, 12]}
    assert c.merges == 1 and c.merged_segments == {13: [2, 3]}
    assert c.split_excess == 1 and c.merge_excess == 1
    # with segment 0 counted as an object, D is split too
    c0 = split_merge_counts(gt, seg, min_overlap_voxels=50, ignore_seg=())
    assert c0.split_objects == {1: [11, 12], 4: [0, 14]}
    # a 5-voxel overlap becomes substantial with low thresholds
    c1 = split_merge_counts(gt, seg, min_overlap_voxels=1, min_overlap_fraction=0.0)
    assert c1.split_objects[1] == [11, 12, 14]
    assert c1.merged_segments[14] == [1, 4]


def test_evaluate_segmentation_json(tmp_path):
    gt, seg = _toy_errors()
    out = evaluate_segmentation(gt, seg, 2, min_overlap_voxels=50)
    text = json.dumps(out)
    back = json.loads(text)
    assert back["log_base"] == "2" and back["vi_units"] == "bits"
    vi = variation_of_information(gt, seg, log_base=2)
    assert back["vi_split"] == pytest.approx(vi.split)
    assert back["vi_merge"] == pytest.approx(vi.merge)
    assert back["vi_sum"] == pytest.approx(vi.sum)
    assert back["adapted_rand_error"] == pytest.approx(adapted_rand_error(gt, seg).error)
    assert back["splits"] == 1 and back["merges"] == 1
    assert back["split_objects"] == {"1": [11, 12]}
    assert back["num_voxels"] == gt.size
    assert evaluate_segmentation(gt, seg)["vi_units"] == "nats"


def test_merge_split_plot_writes_png(tmp_path):
    curves = {
        "WS + MAA": [(0.3, 0.20, 0.01), (0.5, 0.09, 0.02), (0.7, 0.05, 0.08)],
        "MWS + MEA": [(0.0, 0.03, 0.02)],
    }
    path = merge_split_plot(curves, tmp_path / "ms.png", "nats", operating_points={"WS + MAA": (0.09, 0.02)})
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
