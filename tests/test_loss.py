"""Means-based loss (Eqs. 1-5), target preprocessing and the affinity loss."""

import numpy as np
import pytest
import torch

from embedseg_daisy.offsets import BASELINE_LONG_RANGE, BASELINE_NEAREST
from embedseg_daisy.training.affinity_loss import affinity_loss, affinity_targets
from embedseg_daisy.training.loss import (
    augment_background,
    background_loss,
    compact_ids,
    discriminative_loss,
    embedding_loss,
    local_parts,
)


def _row(vectors, labels):
    """Embedding (1, D, 1, 1, V) and labels (1, 1, 1, V) from per-voxel lists."""
    e = torch.tensor(vectors, dtype=torch.float64).T[None, :, None, None, :].contiguous()
    lab = torch.tensor(labels, dtype=torch.int64)[None, None, None, :]
    return e, lab


def _mask(v):
    return torch.zeros(1, 1, 1, 1, v, dtype=torch.float64)


# ------------------------------------------------------------------ hand-computed


def test_two_objects_hand_computed():
    # A: [0,0],[2,0] -> mu_A=[1,0], squared L1 distances 1, 1.  B: [2,.5] x2 -> mu_B=[2,.5].
    # ||mu_A - mu_B||_1 = 1.5 -> hinge (3 - 1.5)^2 = 2.25 per ordered pair, 2 pairs / (2*1).
    # The background voxel (label 0) is huge and must be ignored.
    e, lab = _row([[0, 0], [2, 0], [2, 0.5], [2, 0.5], [100, -100]], [1, 1, 2, 2, 0])
    t = embedding_loss((e, _mask(5)), lab)
    assert t.internal.item() == pytest.approx(0.5)  # (1 + 0) / 2
    assert t.external.item() == pytest.approx(2.25)
    assert t.regularisation.item() == pytest.approx((1.0 + 2.5) / 2)
    assert t.embedding.item() == pytest.approx(0.5 + 2.25 + 0.001 * 1.75)
    # BCE with logit 0 is log 2 for every voxel.
    assert t.background.item() == pytest.approx(np.log(2))
    assert t.total.item() == pytest.approx(t.embedding.item() + np.log(2))


def test_internal_term_is_squared_l1_norm():
    # One object, voxels [0,0] and [2,2]: mu=[1,1], L1 distance 2 -> squared 4 (not L2^2 = 2).
    e, lab = _row([[0, 0], [2, 2]], [7, 7])
    t = embedding_loss((e, _mask(2)), lab)
    assert t.internal.item() == pytest.approx(4.0)


def test_single_object_has_no_external_term():
    e, lab = _row([[0, 0], [1, 0], [0, 0]], [3, 3, 0])
    t = embedding_loss((e, _mask(3)), lab)
    assert t.external.item() == 0.0
    assert t.internal.item() == pytest.approx(0.25)  # mu=[.5,0], distances .5 -> .25
    assert t.regularisation.item() == pytest.approx(0.5)
    assert torch.isfinite(t.total)


def test_locally_split_object_has_no_external_term():
    # Object 1 appears twice, separated by background: two local parts, one object.
    e, lab = _row([[0, 0], [0, 0], [9, 9], [1, 0], [1, 0]], [1, 1, 0, 1, 1])
    parts = local_parts(lab[0].numpy())
    assert parts.max() == 2
    t = embedding_loss((e, _mask(5)), lab)
    assert t.external.item() == 0.0
    assert t.internal.item() == 0.0  # each part is uniform
    assert t.regularisation.item() == pytest.approx(0.5)  # (0 + 1) / 2 parts
    # Two genuinely different objects at the same place are pushed apart:
    e2, lab2 = _row([[0, 0], [0, 0], [9, 9], [1, 0], [1, 0]], [1, 1, 0, 2, 2])
    t2 = embedding_loss((e2, _mask(5)), lab2)
    assert t2.external.item() == pytest.approx(4.0)  # (3 - 1)^2, 2 pairs / 2
    # Without the split, the object is one part with mean [.5, 0].
    t3 = embedding_loss((e, _mask(5)), lab, split_parts=False)
    assert t3.internal.item() == pytest.approx(0.25)
    assert t3.external.item() == 0.0


def test_split_pairs_removed_but_normaliser_counts_parts():
    # Parts: object 1 split in two (a, b), object 2 (c).  Means a=[0], b=[0], c=[1].
    # Valid ordered pairs: (a,c),(c,a),(b,c),(c,b), each (3-1)^2 = 4 -> 16 / (3*2).
    e, lab = _row([[0], [0], [1], [0]], [1, 0, 2, 1])
    assert local_parts(lab[0].numpy()).max() == 3
    t = embedding_loss((e, _mask(4)), lab)
    assert t.external.item() == pytest.approx(16 / 6)


def test_background_only_patch():
    e = torch.randn(1, 24, 2, 4, 4, requires_grad=True)
    m = torch.zeros(1, 1, 2, 4, 4, requires_grad=True)
    lab = torch.zeros(1, 2, 4, 4, dtype=torch.int64)
    t = embedding_loss((e, m), lab)
    assert t.embedding.item() == 0.0
    assert t.internal.item() == t.external.item() == t.regularisation.item() == 0.0
    assert torch.isfinite(t.total)
    t.total.backward()
    assert torch.isfinite(e.grad).all() and torch.isfinite(m.grad).all()
    assert m.grad.abs().sum() > 0  # the background term still trains the mask


def test_batch_is_mean_of_samples():
    torch.manual_seed(0)
    e = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)
    lab = torch.randint(0, 4, (2, 2, 4, 4))
    both = discriminative_loss(e, lab, lab)
    one = [discriminative_loss(e[i : i + 1], lab[i : i + 1], lab[i : i + 1]) for i in range(2)]
    for k in range(4):
        assert both[k].item() == pytest.approx((one[0][k].item() + one[1][k].item()) / 2)


def test_output_is_cropped_to_labels():
    e = torch.zeros(1, 2, 4, 6, 6)
    e[:, 0, 1:3, 1:5, 1:5] = 1.0  # centre
    lab = torch.ones(1, 2, 4, 4, dtype=torch.int64)
    t = embedding_loss((e, torch.zeros(1, 1, 4, 6, 6)), lab)
    assert t.internal.item() == 0.0
    assert t.regularisation.item() == pytest.approx(1.0)


def test_myelin_is_foreground_for_embedding_background_for_mask():
    e, lab = _row([[0, 0], [0, 0], [5, 5]], [1, 2, 2])
    myelin = torch.tensor([False, True, True])[None, None, None, :]
    logit = torch.full((1, 1, 1, 1, 3), 4.0, dtype=torch.float64)  # says "background"
    t = embedding_loss((e, logit), lab, myelin=myelin)
    t_plain = embedding_loss((e, logit), lab)
    assert t.embedding.item() == pytest.approx(t_plain.embedding.item())  # ids kept
    assert t.background.item() < t_plain.background.item()
    expected = background_loss(logit, torch.tensor([[[[False, True, True]]]]))
    assert t.background.item() == pytest.approx(expected.item())


# ------------------------------------------------------------------ gradients


def test_gradient_pulls_one_object_together():
    e, lab = _row([[0.0, 0.0], [1.0, 0.5]], [1, 1])
    e.requires_grad_(True)
    loss = discriminative_loss(e, lab, lab)[1]  # L_int
    (g,) = torch.autograd.grad(loss, e)
    before = (e[..., 0] - e[..., 1]).abs().sum()
    after = ((e - 0.1 * g)[..., 0] - (e - 0.1 * g)[..., 1]).abs().sum()
    assert after < before


def test_gradient_pushes_two_objects_apart():
    e, lab = _row([[0.0, 0.0], [0.1, 0.0], [0.3, 0.2], [0.4, 0.2]], [1, 1, 2, 2])
    e.requires_grad_(True)
    loss = discriminative_loss(e, lab, lab)[0]
    (g,) = torch.autograd.grad(loss, e)
    e2 = e - 0.1 * g

    def gap(x):
        return (x[..., 2:].mean(-1) - x[..., :2].mean(-1)).abs().sum()

    assert gap(e2) > gap(e)


def test_gradcheck():
    torch.manual_seed(1)
    e = (torch.randn(1, 3, 1, 3, 3, dtype=torch.float64) * 0.5).requires_grad_(True)
    lab = torch.tensor([[[[1, 1, 2], [1, 0, 2], [3, 3, 2]]]])
    assert torch.autograd.gradcheck(lambda x: discriminative_loss(x, lab, lab)[0], (e,))


def test_half_precision_input_gives_float32_loss():
    e = torch.randn(1, 4, 2, 4, 4).to(torch.bfloat16)
    lab = torch.randint(0, 3, (1, 2, 4, 4))
    t = embedding_loss((e, torch.zeros(1, 1, 2, 4, 4, dtype=torch.bfloat16)), lab)
    assert t.total.dtype == torch.float32


# ------------------------------------------------------------------ targets


def test_background_kernel_fig_s4():
    lab = np.array([[[1, 1, 1, 2, 2, 2]]], dtype=np.uint64)
    out = augment_background(lab)
    assert out.tolist() == [[[1, 1, 0, 0, 2, 2]]]
    assert out.dtype == np.uint64
    # 3x3 in-plane, one section: ids differing only across sections stay.
    stacked = np.stack([np.full((3, 3), 5), np.full((3, 3), 6)]).astype(np.uint64)
    assert (augment_background(stacked) == stacked).all()
    # Background does not count as an id; a diagonal neighbour does.
    lab = np.zeros((1, 3, 3), np.int64)
    lab[0, 0, 0] = 4
    lab[0, 1, 1] = 4
    lab[0, 2, 2] = 9
    out = augment_background(lab)
    assert out[0, 0, 0] == 4 and out[0, 1, 1] == 0 and out[0, 2, 2] == 0


def test_local_parts_and_compact_ids():
    lab = np.zeros((1, 3, 5), np.uint64)
    lab[0, :, 0] = 2**40
    lab[0, :, 2] = 2**40  # same object, not connected inside the patch
    lab[0, :, 3] = 7  # touches the second piece but is another object
    parts = local_parts(lab)
    assert parts.dtype == np.int64
    assert len(np.unique(parts[parts > 0])) == 3
    c = compact_ids(lab)
    assert c.dtype == np.int64 and c.max() == 2 and (c[lab == 0] == 0).all()
    assert compact_ids(np.array([[[3, 3, 5]]])).tolist() == [[[1, 1, 2]]]


# ------------------------------------------------------------------ affinities


def test_affinity_targets_and_mask():
    lab = torch.tensor([[[[1, 1, 2, 0, 2]]]])  # (1, 1, 1, 5)
    offsets = [(0, 0, -1), (0, 0, -2), (-1, 0, 0)]
    t, v = affinity_targets(lab, offsets)
    assert t[0, 0, 0, 0].tolist() == [0, 1, 0, 0, 0]
    assert v[0, 0, 0, 0].tolist() == [False, True, True, True, True]
    assert t[0, 1, 0, 0].tolist() == [0, 0, 0, 0, 1]  # 2 at x=2 and x=4
    assert v[0, 1, 0, 0].tolist() == [False, False, True, True, True]
    assert not v[0, 2].any()  # z offset leaves a one-section patch


def test_affinity_loss_channels():
    offsets = list(BASELINE_NEAREST) + list(BASELINE_LONG_RANGE)
    lab = torch.randint(1, 3, (1, 6, 16, 16))
    logits = torch.zeros(1, 12, 8, 20, 20, requires_grad=True)
    t = affinity_loss(logits, lab, offsets, long_range_weight=0.5)
    assert t.nearest.item() == pytest.approx(np.log(2))
    assert t.long_range.item() == pytest.approx(np.log(2))
    assert t.total.item() == pytest.approx(1.5 * np.log(2))
    t.total.backward()
    assert logits.grad[:, :, 0].abs().sum() == 0  # outside the centre crop
    # Perfect logits give a small loss.
    tg, valid = affinity_targets(lab, offsets)
    good = (tg * 2 - 1) * 20
    assert affinity_loss(good, lab, offsets).total.item() < 1e-6
