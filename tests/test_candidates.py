"""Self-touch candidates and the split helper."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from embedseg_daisy.candidates import (
    CANDIDATE_DTYPE,
    PAIR_SUMMARY_DTYPE,
    THETA_SELF_TOUCH,
    contact_graph_summary,
    self_touch_candidates,
    split_at_self_contact,
)
from embedseg_daisy.contacts import CONTACT_DTYPE, find_contacts

SELF_CONTACT = (1, 9, 10.5)  # midpoint of the x-edge between (1, 9, 10) and (1, 9, 11)


def u_object_volume():
    """Ground truth with a U-shaped object 1 whose arms touch (self-contact).

    Arms x in [4, 10) and [12, 18) for y in [4, 30), joined by a bottom y in [26, 32).
    The arms bulge towards each other at y in [8, 11) (x = 10 and x = 11) and touch
    face to face across the plane x = 10.5.  Object 2 fills the gap below the bulge,
    object 3 is a slab next to the right arm.
    """
    gt = np.zeros((4, 36, 24), np.uint64)
    gt[:, 4:30, 4:10] = 1
    gt[:, 4:30, 12:18] = 1
    gt[:, 26:32, 4:18] = 1
    gt[:, 8:11, 10:12] = 1
    gt[:, 12:26, 10:12] = 2
    gt[:, 0:36, 18:24] = 3
    return gt


def oracle_affinities(gt, membrane_edges=()):
    """1 for an edge inside one GT object, 0 across objects/background; the listed
    edges (channel, z, y, x) get 0.1: a visible membrane at the self-contact."""
    affs = np.zeros((3, *gt.shape), np.float32)
    for c in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[c] = slice(1, None)
        lo[c] = slice(None, -1)
        same = (gt[tuple(hi)] == gt[tuple(lo)]) & (gt[tuple(hi)] != 0)
        affs[c][tuple(hi)] = same
    for e in membrane_edges:
        affs[e] = 0.1
    return affs


def self_contact_edges():
    # x-edges owned by x = 11 at the bulge rows, all z
    return [(2, z, y, 11) for z in range(4) for y in range(8, 11)]


def split_u():
    gt = u_object_volume()
    seg, new_id = split_at_self_contact(gt, 1, SELF_CONTACT)
    return gt, seg, new_id


# ---------------------------------------------------------------- split helper


def test_split_gives_two_connected_pieces_touching_twice():
    gt, seg, new_id = split_u()
    assert new_id == 4
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 3, 4}
    # only object 1 changed, and it is exactly the union of the two pieces
    np.testing.assert_array_equal(seg[gt != 1], gt[gt != 1])
    np.testing.assert_array_equal((seg == 1) | (seg == 4), gt == 1)
    for lab in (1, 4):
        assert ndimage.label(seg == lab)[1] == 1  # 6-connected, one piece
    # u keeps the id, v gets the new one
    assert seg[1, 9, 10] == 1 and seg[1, 9, 11] == 4
    affs = oracle_affinities(gt)
    c = find_contacts(seg, affs)
    pair = c[(c["seg_a"] == 1) & (c["seg_b"] == 4)]
    assert len(pair) == 2
    at_contact = pair[np.abs(pair["y"] - 9.0) < 1e-9]
    assert len(at_contact) == 1 and at_contact["size"][0] == 12
    assert at_contact["x"][0] == 10.5
    false_split = pair[pair["y"] > 20]
    assert len(false_split) == 1  # the far side of the loop (the U's bottom)


def test_split_arguments():
    gt = u_object_volume()
    with pytest.raises(ValueError):  # no axis and no half-integer coordinate
        split_at_self_contact(gt, 1, (1, 9, 10))
    a, _ = split_at_self_contact(gt, 1, (1, 9, 10), axis=2)
    b, _ = split_at_self_contact(gt, 1, SELF_CONTACT)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):  # voxels not in the object
        split_at_self_contact(gt, 1, (1, 15, 10.5))
    # the bottom lies on the same loop: cutting there works too (pieces meet at the bulge)
    d, _ = split_at_self_contact(gt, 1, (1, 28, 10.5))
    assert d[1, 28, 10] == 1 and d[1, 28, 11] == 4 and d[1, 9, 10] != d[1, 9, 11]
    no_touch = gt.copy()
    no_touch[:, 8:11, 10:12] = 0  # without the self-contact the U has no loop
    with pytest.raises(ValueError):
        split_at_self_contact(no_touch, 1, (1, 28, 10.5))
    c, nid = split_at_self_contact(gt, 1, SELF_CONTACT, new_id=77, radius=1.0)
    assert nid == 77 and np.sum(c == 77) > 0
    assert gt.max() == 3  # input untouched


def test_split_with_radius_cuts_part_of_a_long_face():
    # a solid block: the face between x = 5 and x = 6 spans the whole block, so without
    # a radius the cut separates it (no loop); with a small radius the object stays
    # connected around the cut and the pieces meet on the far side
    gt = np.zeros((1, 12, 12), np.uint64)
    gt[0, 1:11, 1:11] = 9
    with pytest.raises(ValueError):
        split_at_self_contact(gt, 9, (0, 2, 5.5))
    seg, nid = split_at_self_contact(gt, 9, (0, 2, 5.5), radius=1)
    for lab in (9, nid):
        assert ndimage.label(seg == lab)[1] == 1
    assert seg[0, 2, 5] == 9 and seg[0, 2, 6] == nid


# ---------------------------------------------------------------- candidates


def test_self_touch_split_is_detected_at_the_false_split():
    gt, seg, new_id = split_u()
    affs = oracle_affinities(gt, self_contact_edges())
    contacts = find_contacts(seg, affs)
    cands = self_touch_candidates(contacts)
    assert cands.dtype == CANDIDATE_DTYPE
    assert len(cands) == 1
    cand = cands[0]
    assert (int(cand["seg_a"]), int(cand["seg_b"])) == (1, new_id)
    assert cand["n_contacts"] == 2
    assert cand["score"] == pytest.approx(1.0)
    # the best contact is the false split at the U's bottom, not the self-contact
    assert cand["y"] > 20
    # blockwise contacts give the same candidates
    cands_b = self_touch_candidates(find_contacts(seg, affs, block_shape=(2, 7, 5)))
    np.testing.assert_array_equal(cands_b, cands)


def test_one_contact_pairs_and_low_scores_are_not_candidates():
    gt = u_object_volume()
    # unsplit ground truth: every pair has one contact
    contacts = find_contacts(gt, np.ones((3, *gt.shape), np.float32))
    summary = contact_graph_summary(contacts)
    assert summary.dtype == PAIR_SUMMARY_DTYPE
    assert np.all(summary["n_contacts"] == 1)
    assert len(self_touch_candidates(contacts)) == 0
    # split object, but the evidence for connectivity is weak everywhere
    _, seg, _ = split_u()
    weak = np.full((3, *gt.shape), 0.2, np.float32)
    assert len(self_touch_candidates(find_contacts(seg, weak))) == 0
    assert len(self_touch_candidates(find_contacts(seg, weak), theta=0.1)) == 1


def make_contacts(rows):
    out = np.zeros(len(rows), CONTACT_DTYPE)
    for i, (cid, a, b, size, score, zyx) in enumerate(rows):
        out[i]["contact_id"] = cid
        out[i]["seg_a"] = a
        out[i]["seg_b"] = b
        out[i]["size"] = size
        out[i]["score"] = score
        out[i]["z"], out[i]["y"], out[i]["x"] = zyx
    return out


def test_theta_is_strict_and_best_contact_chosen():
    contacts = make_contacts(
        [
            (10, 1, 2, 5, 0.25, (0, 0, 0)),  # pair (1, 2): best S exactly theta
            (11, 1, 2, 5, 0.10, (1, 1, 1)),
            (20, 3, 4, 5, 0.30, (2, 2, 2)),  # pair (3, 4): best 0.9 at contact 22
            (21, 3, 4, 50, 0.10, (3, 3, 3)),
            (22, 3, 4, 7, 0.90, (4, 4, 4)),
            (30, 5, 6, 5, 0.99, (5, 5, 5)),  # pair (5, 6): one contact only
            (40, 7, 8, 3, 0.60, (6, 6, 6)),  # pair (7, 8): tie on S -> larger contact
            (41, 7, 8, 9, 0.60, (7, 7, 7)),
            (42, 7, 8, 9, 0.60, (8, 8, 8)),  # same size -> smaller id (41)
        ]
    )
    rng = np.random.default_rng(0)
    cands = self_touch_candidates(contacts[rng.permutation(len(contacts))], theta=THETA_SELF_TOUCH)
    assert [(int(c["seg_a"]), int(c["seg_b"])) for c in cands] == [(3, 4), (7, 8)]
    assert cands[0]["contact_id"] == 22 and cands[0]["score"] == 0.9 and cands[0]["n_contacts"] == 3
    assert (cands[0]["z"], cands[0]["y"], cands[0]["x"]) == (4, 4, 4)
    assert cands[1]["contact_id"] == 41 and cands[1]["contact_size"] == 9
    assert len(self_touch_candidates(contacts, theta=0.2)) == 3
    assert len(self_touch_candidates(contacts, theta=0.95)) == 0
    summary = contact_graph_summary(contacts)
    row = summary[(summary["seg_a"] == 3)][0]
    assert row["n_contacts"] == 3 and row["total_size"] == 62
    assert row["mean_score"] == pytest.approx((0.3 * 5 + 0.1 * 50 + 0.9 * 7) / 62)
    assert len(self_touch_candidates(contacts[:0])) == 0
