"""MEA decision with an oracle embedding, focal windows and patch placement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedseg_daisy.candidates import self_touch_candidates, split_at_self_contact
from embedseg_daisy.contacts import find_contacts
from embedseg_daisy.mea import (
    FOCAL_SHAPE,
    INPUT_SHAPE,
    OUTPUT_SHAPE,
    THETA_D,
    MeaResult,
    default_focal_box,
    mea_decision,
    patch_box_around,
    read_box,
)


def oracle_embeddings(gt, dim=6, seed=0):
    """Each GT object one vector, pairwise L1 > 3; background a vector of its own."""
    rng = np.random.default_rng(seed)
    ids = np.unique(gt)
    vecs = {}
    for k in ids:
        while True:
            v = rng.uniform(-3, 3, size=dim)
            if all(np.abs(v - w).sum() > 3 for w in vecs.values()):
                vecs[int(k)] = v
                break
    emb = np.zeros((dim, *gt.shape), np.float32)
    for k, v in vecs.items():
        emb[:, gt == k] = v[:, None]
    return emb


def oracle_affinities(gt, low_edges=(), high_pairs=()):
    affs = np.zeros((3, *gt.shape), np.float32)
    for c in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[c] = slice(1, None)
        lo[c] = slice(None, -1)
        a, b = gt[tuple(hi)], gt[tuple(lo)]
        val = ((a == b) & (a != 0)).astype(np.float32)
        for p, q in high_pairs:  # distinct objects that look connected (a merge trap)
            val[((a == p) & (b == q)) | ((a == q) & (b == p))] = 0.9
        affs[c][tuple(hi)] = val
    for e in low_edges:
        affs[e] = 0.1
    return affs


def scene():
    """Ground truth (4, 36, 40): a self-touching U (object 1, see test_candidates),
    object 2 in the U's gap, and two distinct objects 5 (slab) and 6 (comb) whose
    teeth touch the slab twice."""
    gt = np.zeros((4, 36, 40), np.uint64)
    gt[:, 4:30, 4:10] = 1
    gt[:, 4:30, 12:18] = 1
    gt[:, 26:32, 4:18] = 1
    gt[:, 8:11, 10:12] = 1
    gt[:, 12:26, 10:12] = 2
    gt[:, 2:34, 24:28] = 5
    gt[:, 2:34, 30:34] = 6
    gt[:, 6:10, 28:30] = 6  # tooth 1
    gt[:, 24:28, 28:30] = 6  # tooth 2
    return gt


SELF_CONTACT = (1, 9, 10.5)
MEMBRANE = [(2, z, y, 11) for z in range(4) for y in range(8, 11)]


def candidates_of_scene():
    gt = scene()
    seg, new_id = split_at_self_contact(gt, 1, SELF_CONTACT)
    affs = oracle_affinities(gt, MEMBRANE, high_pairs=[(5, 6)])
    cands = self_touch_candidates(find_contacts(seg, affs))
    return gt, seg, new_id, cands


def decide(gt, seg, cand, patch, output, focal, emb=None):
    emb = oracle_embeddings(gt) if emb is None else emb
    boxes = patch_box_around((cand["z"], cand["y"], cand["x"]), patch, gt.shape,
                             output_shape=output, focal_shape=focal)
    e = read_box(emb, boxes.output_box)
    s = read_box(seg, boxes.output_box)
    return mea_decision(e, s, int(cand["seg_a"]), int(cand["seg_b"]), focal_box=boxes.focal_in_output), boxes


def test_oracle_merges_true_self_touch_and_rejects_distinct_objects():
    gt, seg, new_id, cands = candidates_of_scene()
    pairs = {(int(c["seg_a"]), int(c["seg_b"])): c for c in cands}
    assert set(pairs) == {(1, new_id), (5, 6)}
    for patch, output, focal in [((4, 24, 24), (4, 16, 16), (3, 8, 8)), (INPUT_SHAPE, OUTPUT_SHAPE, FOCAL_SHAPE)]:
        res, _ = decide(gt, seg, pairs[(1, new_id)], patch, output, focal)
        assert isinstance(res, MeaResult)
        assert res.merge and res.reason == "below_threshold"
        assert res.distance == pytest.approx(0.0, abs=1e-9)
        assert res.n_s1 > 0 and res.n_s2 > 0
        res, _ = decide(gt, seg, pairs[(5, 6)], patch, output, focal)
        assert not res.merge and res.reason == "above_threshold"
        assert res.distance > 3.0


def test_noisy_oracle_still_decides_and_threshold_is_strict():
    gt, seg, new_id, cands = candidates_of_scene()
    rng = np.random.default_rng(1)
    emb = oracle_embeddings(gt) + rng.normal(0, 0.3, size=(6, *gt.shape)).astype(np.float32)
    c_true = cands[cands["seg_b"] == new_id][0]
    res, _ = decide(gt, seg, c_true, (4, 24, 24), (4, 16, 16), (3, 8, 8), emb=emb)
    assert res.merge and res.distance < 0.5
    # d == theta_d is no merge
    e = np.zeros((2, 1, 2, 2), np.float32)
    s = np.array([[[1, 1], [2, 2]]], np.uint64)
    e[0, 0, 1, :] = THETA_D
    r = mea_decision(e, s, 1, 2, focal_box=((0, 0, 0), (1, 2, 2)))
    assert r.distance == THETA_D and not r.merge
    r = mea_decision(e, s, 1, 2, focal_box=((0, 0, 0), (1, 2, 2)), theta_d=1.6)
    assert r.merge


def test_focal_window_restriction():
    # patch (5, 40, 40): s1 fills the middle, s2 only the outer ring beyond the window
    seg = np.zeros((5, 40, 40), np.uint64)
    seg[:, 10:30, 10:30] = 1
    seg[:, :4, :] = 2
    emb = np.zeros((3, 5, 40, 40), np.float32)
    emb[:, seg == 2] = 1.0  # s2 far from s1 (L1 3) - irrelevant, it is absent
    box = default_focal_box(seg.shape, (3, 16, 16))
    assert box == ((1, 12, 12), (4, 28, 28))
    r = mea_decision(emb, seg, 1, 2, focal_shape=(3, 16, 16))
    assert not r.merge and r.reason == "s2_absent" and math.isnan(r.distance)
    assert r.n_s1 == 3 * 16 * 16 and r.n_s2 == 0
    assert mea_decision(emb, seg, 2, 1, focal_shape=(3, 16, 16)).reason == "s1_absent"
    assert mea_decision(emb, seg, 7, 8, focal_shape=(3, 16, 16)).reason == "both_absent"
    # a window that reaches s2 sees it
    r = mea_decision(emb, seg, 1, 2, focal_box=((0, 0, 0), (5, 40, 40)))
    assert r.n_s2 == 5 * 4 * 40 and r.distance == pytest.approx(3.0) and not r.merge
    # only voxels inside the window count towards the means
    seg2 = seg.copy()
    seg2[:, 20:30, 20:30] = 2
    emb2 = np.zeros_like(emb)
    emb2[:, seg2 == 2] = 1.0
    emb2[:, :, 10:12, :] = 100.0  # s1 voxels outside the default window: ignored
    r = mea_decision(emb2, seg2, 1, 2, focal_shape=(3, 16, 16))
    assert r.reason == "above_threshold" and r.distance == pytest.approx(3.0)


def test_torch_and_numpy_agree():
    gt, seg, new_id, cands = candidates_of_scene()
    emb = oracle_embeddings(gt) + np.random.default_rng(2).normal(0, 0.5, size=(6, *gt.shape)).astype(np.float32)
    for cand in cands:
        boxes = patch_box_around((cand["z"], cand["y"], cand["x"]), (4, 24, 24), gt.shape,
                                 output_shape=(4, 16, 16), focal_shape=(3, 8, 8))
        e = read_box(emb, boxes.output_box)
        s = read_box(seg, boxes.output_box)
        a = mea_decision(e, s, int(cand["seg_a"]), int(cand["seg_b"]), focal_box=boxes.focal_in_output)
        b = mea_decision(torch.from_numpy(e)[None], torch.from_numpy(s.astype(np.int64)),
                         int(cand["seg_a"]), int(cand["seg_b"]), focal_box=boxes.focal_in_output)
        assert a.merge == b.merge and a.reason == b.reason
        assert a.distance == pytest.approx(b.distance, rel=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        mea_decision(np.zeros((3, 4, 4, 4)), np.zeros((4, 4, 5)), 1, 2)
    with pytest.raises(ValueError):
        mea_decision(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), 1, 2)


# ---------------------------------------------------------------- patch placement


def test_patch_centred_in_the_interior():
    b = patch_box_around((100.2, 300.5, 400.0), INPUT_SHAPE, (200, 1000, 1000))
    assert b.center == (100, 301, 400)
    assert b.input_box == ((90, 237, 336), (110, 365, 464))
    assert b.output_box == ((92, 253, 352), (108, 349, 448))
    assert b.focal_box == ((98, 285, 384), (103, 317, 416))
    assert b.focal_in_output == ((6, 32, 32), (11, 64, 64))
    assert b.focal_in_output == default_focal_box(OUTPUT_SHAPE, FOCAL_SHAPE)
    assert b.focal_in_input == ((8, 48, 48), (13, 80, 80))
    assert b.shift == (0, 0, 0) and not b.needs_padding and b.focal_centered and b.center_in_output
    # near the border but not within the crop margin: shifted patch, contact inside
    b = patch_box_around((5.0, 20.0, 970.0), INPUT_SHAPE, (200, 1000, 1000))
    assert b.center_in_output and not b.focal_centered
    fb, fe = b.focal_box
    assert fb[2] <= 970 < fe[2] and fb[1] <= 20 < fe[1]


def test_patch_shifted_inside_at_the_border_focal_follows_the_contact():
    b = patch_box_around((1.0, 5.0, 995.0), INPUT_SHAPE, (200, 1000, 1000))
    assert b.input_box == ((0, 0, 872), (20, 128, 1000))
    assert b.shift == (9, 59, -59) and not b.needs_padding
    # focal window centred on the contact voxel, clamped into the output crop
    ob, oe = b.output_box
    assert ob == (2, 16, 888)
    fb, fe = b.focal_box
    assert (fe[0] - fb[0], fe[1] - fb[1], fe[2] - fb[2]) == FOCAL_SHAPE
    # z, y pushed into the crop; along x the contact (995) lies beyond the crop's end
    # (984): the window is flush with the crop's far side and the contact is outside it
    assert fb == (2, 16, 952)
    assert not b.center_in_output
    assert all(o0 <= f0 and f1 <= o1 for o0, o1, f0, f1 in zip(ob, oe, fb, fe))
    assert not b.focal_centered
    assert b.focal_in_output == ((0, 0, 64), (5, 32, 96))


def test_volume_smaller_than_patch_needs_padding():
    b = patch_box_around((2, 10, 10), INPUT_SHAPE, (8, 40, 30))
    assert b.input_box == ((-6, -44, -49), (14, 84, 79))
    assert b.pad_before == (6, 44, 49) and b.pad_after == (6, 44, 49)
    assert b.needs_padding
    fb, fe = b.focal_box
    assert all(0 <= f0 < f1 <= v for f0, f1, v in zip(fb, fe, (8, 40, 30)))
    assert (fe[0] - fb[0], fe[1] - fb[1], fe[2] - fb[2]) == (5, 32, 30)  # shrunk to the volume
    raw = np.arange(8 * 40 * 30, dtype=np.float32).reshape(8, 40, 30)
    patch = read_box(raw, b.input_box)
    assert patch.shape == INPUT_SHAPE
    np.testing.assert_array_equal(patch[6:14, 44:84, 49:79], raw)
    assert patch[0, 0, 0] == 0
