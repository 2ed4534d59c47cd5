"""Eq. 6 metric-graph affinities: formula, offset direction, validity, oracle objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from embedseg_daisy.metric_graph import (
    edge_slices,
    metric_affinities,
    metric_affinities_np,
    metric_affinities_numba,
    valid_edge_mask,
)
from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE

PAPER_OFFSETS = PAPER_ATTRACTIVE + PAPER_REPULSIVE


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The stand-in nets and patches are tiny: one intra-op thread is as fast, and it
    avoids OpenMP barrier stalls (10x slower runs) when the shared cores are busy."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _pair_embedding(dist: float, dim: int = 4) -> np.ndarray:
    """(dim, 1, 1, 2) embeddings of two voxels along x at L1 distance ``dist``."""
    emb = np.zeros((dim, 1, 1, 2), np.float64)
    emb[:, 0, 0, 1] = dist / dim  # spread over every dimension
    return emb


def test_equal_embeddings_give_one():
    emb = torch.randn(24, 3, 5, 6, dtype=torch.float64).mul(0) + torch.randn(24, 1, 1, 1, dtype=torch.float64)
    affs, valid = metric_affinities(emb, PAPER_OFFSETS)
    assert torch.all(affs[valid] == 1.0)
    assert torch.all(affs[~valid] == 0.0)


@pytest.mark.parametrize("dist", [3.0, 3.0001, 4.5, 100.0])
def test_far_embeddings_give_zero(dist):
    affs, valid = metric_affinities(torch.from_numpy(_pair_embedding(dist)), [(0, 0, -1)])
    assert valid[0, 0, 0, 1] and affs[0, 0, 0, 1] == 0.0
    assert metric_affinities_numba(_pair_embedding(dist).astype(np.float32), [(0, 0, -1)])[0, 0, 0, 1] == 0.0


@pytest.mark.parametrize("dist", [0.0, 0.3, 1.0, 1.5, 2.2, 2.999])
@pytest.mark.parametrize("delta_d", [1.5, 0.75])
def test_formula_at_intermediate_distances(dist, delta_d):
    emb = _pair_embedding(dist)
    affs, _ = metric_affinities(torch.from_numpy(emb), [(0, 0, -1)], delta_d)
    want = max((2 * delta_d - dist) / (2 * delta_d), 0.0) ** 2
    assert float(affs[0, 0, 0, 1]) == pytest.approx(want, abs=1e-12)
    affs_np, _ = metric_affinities_np(emb, [(0, 0, -1)], delta_d)
    assert affs_np[0, 0, 0, 1] == pytest.approx(want, abs=1e-12)
    affs_nb = metric_affinities_numba(emb.astype(np.float32), [(0, 0, -1)], delta_d)
    assert affs_nb[0, 0, 0, 1] == pytest.approx(want, abs=1e-6)


def test_offset_direction_pinned():
    # channel k at p relates p and p + o_k: a single odd voxel q is seen at q itself
    # (when its partner q + o is ordinary) and at q - o (whose partner is q)
    shape = (5, 12, 12)
    q = (2, 6, 6)
    emb = torch.zeros(3, *shape, dtype=torch.float64)
    emb[0][q] = 10.0
    affs, valid = metric_affinities(emb, PAPER_OFFSETS)
    for k, o in enumerate(PAPER_OFFSETS):
        zero = torch.nonzero((affs[k] == 0) & valid[k]).tolist()
        expect = sorted([list(q), [q[0] - o[0], q[1] - o[1], q[2] - o[2]]])
        assert sorted(zero) == expect, (o, zero)
    affs_nb = metric_affinities_numba(emb.float().numpy(), PAPER_OFFSETS)
    assert np.array_equal(affs_nb, affs.float().numpy())


def test_validity_mask_at_borders():
    shape = (4, 7, 9)
    mask = valid_edge_mask(shape, PAPER_OFFSETS)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    for k, o in enumerate(PAPER_OFFSETS):
        pz, py, px = z + o[0], y + o[1], x + o[2]
        want = (pz >= 0) & (pz < shape[0]) & (py >= 0) & (py < shape[1]) & (px >= 0) & (px < shape[2])
        assert np.array_equal(mask[k], want), o
    emb = torch.randn(6, *shape)
    _, valid = metric_affinities(emb, PAPER_OFFSETS)
    assert np.array_equal(valid.numpy(), mask)
    assert edge_slices((0, 0, -9), shape) is None  # longer than the array: no edge at all
    affs, valid = metric_affinities(emb, [(0, 0, -9)])
    assert not valid.any() and not affs.any()


def test_numpy_twin_and_batched_match():
    g = torch.Generator().manual_seed(3)
    emb = torch.rand(2, 24, 5, 11, 13, generator=g) * 0.3
    affs_b, valid_b = metric_affinities(emb, PAPER_OFFSETS)
    assert affs_b.shape == (2, 12, 5, 11, 13) and affs_b.dtype == torch.float32
    assert 0.05 < float(affs_b[:, valid_b].mean()) < 0.95  # genuinely intermediate values
    for n in range(2):
        affs, valid = metric_affinities(emb[n], PAPER_OFFSETS)
        assert torch.equal(valid, valid_b)
        torch.testing.assert_close(affs, affs_b[n], rtol=0, atol=1e-6)
        affs_np, valid_np = metric_affinities_np(emb[n].numpy(), PAPER_OFFSETS)
        assert np.array_equal(valid_np, valid.numpy())
        np.testing.assert_allclose(affs_np, affs.numpy(), rtol=0, atol=1e-6)
        affs_nb = metric_affinities_numba(emb[n].numpy(), PAPER_OFFSETS)
        np.testing.assert_allclose(affs_nb, affs.numpy(), rtol=0, atol=1e-6)
        assert np.all(affs_nb[~valid_np] == 0)
    # brute force at a few voxels
    e = emb[0].double().numpy()
    for k, o in enumerate(PAPER_OFFSETS):
        for p in [(2, 5, 6), (4, 10, 12), (1, 6, 7)]:
            q = tuple(a + b for a, b in zip(p, o))
            if all(0 <= v < n for v, n in zip(q, e.shape[1:])):
                d = np.abs(e[(slice(None),) + p] - e[(slice(None),) + q]).sum()
                want = max((3 - d) / 3, 0) ** 2
                assert float(affs_b[0, k][p]) == pytest.approx(want, abs=1e-6)


def test_out_and_scratch_arguments():
    emb = torch.rand(4, 3, 6, 6)
    ref, _ = metric_affinities(emb, PAPER_OFFSETS)
    out = torch.full((12, 3, 6, 6), 7.0)
    scratch = torch.full_like(emb, 5.0)
    affs, _ = metric_affinities(emb, PAPER_OFFSETS, out=out, scratch=scratch)
    assert affs is out and torch.equal(out, ref)
    with pytest.raises(ValueError):
        metric_affinities(emb, PAPER_OFFSETS, scratch=torch.zeros(4, 3, 6, 5))
    with pytest.raises(ValueError):
        metric_affinities(emb, PAPER_OFFSETS, out=torch.zeros(3, 3, 6, 6))


def oracle_labels(shape=(12, 40, 40), seed=0) -> np.ndarray:
    """Synthetic objects (blobs, slabs) touching each other and the volume border, with
    background (label 0) between some of them."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(1.0, 3.0, 3.0))
    # quantile classes split into connected pieces: many objects touching each other
    classes = np.digitize(noise, np.quantile(noise, [0.2, 0.4, 0.55, 0.7, 0.85]))
    out = np.zeros(shape, np.int64)
    nxt = 1
    for c in np.unique(classes):
        comp, n = ndimage.label(classes == c)
        out[comp > 0] = comp[comp > 0] + nxt - 1
        nxt += n
    out[classes == 2] = 0  # one class is background
    return out


def oracle_embedding(labels: np.ndarray, dim: int = 24, seed: int = 0) -> np.ndarray:
    """Each object a distinct ``dim``-d vector, pairwise L1 distance > 3; background random."""
    rng = np.random.default_rng(seed)
    n = int(labels.max()) + 1
    table = np.zeros((n, dim), np.float32)
    for i in range(1, n):
        table[i, i % dim] = 4.0 * (1 + i // dim)  # distinct one-hot-like vectors
        table[i, (i // dim) % dim] += 0.5
    d = np.abs(table[1:, None] - table[None, 1:]).sum(-1)
    assert np.all(d[~np.eye(n - 1, dtype=bool)] > 3)
    emb = table[labels].transpose(3, 0, 1, 2).copy()
    bg = labels == 0
    emb[:, bg] = rng.normal(size=(dim, int(bg.sum()))).astype(np.float32) * 2
    return emb


def check_oracle_affinities(labels: np.ndarray, affs: np.ndarray, offsets, *, atol: float = 0.0) -> None:
    """≈1 inside objects, 0 across objects, 0 where the partner leaves the volume."""
    shape = labels.shape
    valid = valid_edge_mask(shape, offsets)
    for k, o in enumerate(offsets):
        src, dst = edge_slices(o, shape)
        a = affs[k][src]
        lp, lq = labels[src], labels[dst]
        same = (lp == lq) & (lp > 0)
        across = (lp != lq) & (lp > 0) & (lq > 0)
        assert same.any() and across.any(), o
        np.testing.assert_allclose(a[same], 1.0, rtol=0, atol=atol)
        assert np.all(a[across] == 0.0), o
        assert np.all(affs[k][~valid[k]] == 0.0), o  # edges pointing outside the volume
        # the border voxels are covered too
        border = np.zeros(shape, bool)
        border[src] = True
        border[1:-1, 1:-1, 1:-1] = False
        assert (same & border[src]).any() or (across & border[src]).any(), o


def test_oracle_offsets():
    labels = oracle_labels()
    emb = oracle_embedding(labels)
    affs, valid = metric_affinities(torch.from_numpy(emb), PAPER_OFFSETS)
    assert np.array_equal(valid.numpy(), valid_edge_mask(labels.shape, PAPER_OFFSETS))
    assert not valid[0, :, :, 0].any()  # (0, 0, -1) at x = 0 points outside: invalid
    check_oracle_affinities(labels, affs.numpy(), PAPER_OFFSETS)
    affs_np, _ = metric_affinities_np(emb, PAPER_OFFSETS)
    check_oracle_affinities(labels, affs_np, PAPER_OFFSETS)
    check_oracle_affinities(labels, metric_affinities_numba(emb, PAPER_OFFSETS), PAPER_OFFSETS)
