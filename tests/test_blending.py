"""Global patch lattice and bump weights: coverage, order, log-space blending, underflow."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from embedseg_daisy.blending import (
    Lattice,
    Patch,
    blend_log_space,
    bump_logit_1d,
    bump_logits,
    bump_weights,
    context,
    default_stride,
    get_lattice,
    lattice_origins_1d,
    patches_touching,
)
from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE

PAPER_OFFSETS = PAPER_ATTRACTIVE + PAPER_REPULSIVE


# ----------------------------------------------------------------------- lattice
def test_origins_1d():
    assert lattice_origins_1d(40, 16, 8).tolist() == [0, 8, 16, 24]
    assert lattice_origins_1d(41, 16, 8).tolist() == [0, 8, 16, 24, 25]  # flush patch
    assert lattice_origins_1d(16, 16, 8).tolist() == [0]
    assert lattice_origins_1d(10, 16, 8).tolist() == [0]  # smaller than the crop
    assert lattice_origins_1d(17, 16, 8).tolist() == [0, 1]
    assert lattice_origins_1d(200, 96, 48).tolist() == [0, 48, 96, 104]


def test_default_stride_is_half_the_crop():
    assert default_stride((16, 96, 96)) == (8, 48, 48)
    assert default_stride((4, 16, 16)) == (2, 8, 8)
    assert default_stride((1, 3, 16)) == (1, 1, 8)


@pytest.mark.parametrize("shape", [(12, 40, 40), (13, 41, 37), (3, 10, 50), (4, 16, 16), (1, 1, 1)])
def test_lattice_covers_volume_with_stride_and_flush_patch(shape):
    out = (4, 16, 16)
    lat = Lattice(shape, out)
    assert lat.stride == (2, 8, 8)
    for a in range(3):
        o = lat.origins[a]
        assert o[0] == 0
        if shape[a] <= out[a]:
            assert o.tolist() == [0]
            continue
        assert o[-1] + out[a] == shape[a]  # flush with the far end
        steps = np.diff(o)
        assert np.all(steps[:-1] == lat.stride[a]) and 0 < steps[-1] <= lat.stride[a]
        assert np.all(o[:-1] % lat.stride[a] == 0)
        assert np.all(o + out[a] <= shape[a])
    covered = np.zeros(shape, int)
    for p in lat.patches():
        (b, e) = p.output_box(out)
        covered[b[0] : e[0], b[1] : e[1], b[2] : e[2]] += 1
    assert covered.min() >= 1
    assert len(lat.patches()) == len(lat) == np.prod(lat.grid_shape)


def test_patches_touching_is_sorted_and_exact():
    shape, out = (13, 41, 37), (4, 16, 16)
    lat = get_lattice(shape, out)
    every = lat.patches()
    assert every == sorted(every)
    rng = np.random.default_rng(1)
    for _ in range(30):
        b = [int(rng.integers(0, n)) for n in shape]
        e = [int(rng.integers(bb + 1, n + 1)) for bb, n in zip(b, shape)]
        got = patches_touching((b, e), shape, out)
        want = []
        for p in every:
            pb, pe = p.output_box(out)
            pe = [min(x, n) for x, n in zip(pe, shape)]
            if all(max(x0, y0) < min(x1, y1) for x0, x1, y0, y1 in zip(pb, pe, b, e)):
                want.append(p)
        assert got == want
        assert got == sorted(got)
    assert patches_touching(((0, 0, 0), shape), shape, out) == every
    with pytest.raises(ValueError):
        patches_touching(((0, 0, 0), (14, 41, 37)), shape, out)


def test_input_box_is_centred():
    assert context((16, 96, 96), (20, 128, 128)) == (2, 16, 16)
    p = Patch((1, 1, 1), (8, 48, 48))
    assert p.input_box((16, 96, 96), (20, 128, 128)) == ((6, 32, 32), (26, 160, 160))
    with pytest.raises(ValueError):
        context((16, 96, 96), (19, 128, 128))


# ------------------------------------------------------------------ bump weights
@pytest.mark.parametrize("n", [1, 2, 5, 16, 96])
def test_bump_symmetric_and_maximal_at_centre(n):
    f = bump_logit_1d(n)
    np.testing.assert_allclose(f, f[::-1], rtol=0, atol=1e-9)
    assert np.argmax(f) == (n - 1) // 2
    assert np.all(np.diff(f[: (n + 1) // 2]) > 0)  # increasing towards the centre
    w = bump_weights((n, n, n))
    assert w.max() == pytest.approx(1.0)
    c = (n - 1) // 2
    assert w[c, c, c] == w.max()
    np.testing.assert_allclose(w, np.transpose(w, (2, 1, 0)))


def test_bump_border_logit_value():
    f = bump_logit_1d(96)
    assert f[0] == pytest.approx(-970.3, abs=0.2)
    assert f[47] == pytest.approx(-8.0, abs=0.01)
    assert bump_logits((16, 96, 96))[0, 0, 0] == pytest.approx(f[0] * 2 + bump_logit_1d(16)[0])
    # the naive weight underflows in float64 at the crop border
    assert np.exp(bump_logits((16, 96, 96))[0, 0, 0]) == 0.0


def test_two_patch_log_space_blend_equals_weighted_mean():
    # two overlapping 1-D patches (n = 16, stride 8) with constant values
    n, s = 16, 8
    f = bump_logit_1d(n)
    length = n + s
    logits = np.full((2, length), -np.inf)
    logits[0, :n] = f
    logits[1, s:] = f
    values = np.stack([np.full(length, 0.2), np.full(length, 0.9)])
    got = blend_log_space(values, logits)
    wa = np.where(np.isfinite(logits[0]), np.exp(logits[0]), 0.0)
    wb = np.where(np.isfinite(logits[1]), np.exp(logits[1]), 0.0)
    want = (wa * 0.2 + wb * 0.9) / (wa + wb)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the lattice's separable normalised weights give the same blend
    lat = Lattice((1, 1, length), (1, 1, n), (1, 1, s))
    table = lat.axis_weights(2)
    assert table.shape == (2, n)
    blend = np.zeros(length)
    blend[:n] += table[0] * 0.2
    blend[s:] += table[1] * 0.9
    np.testing.assert_allclose(blend, want, rtol=1e-12)


def test_no_underflow_at_real_patch_size():
    # a voxel in the corner of the volume is covered only by crop borders: naive weights
    # are exp(-2000) = 0 in float64 (0 / 0); the log-space tables give weight 1
    shape, out = (24, 144, 144), (16, 96, 96)
    lat = get_lattice(shape, out)
    assert lat.stride == (8, 48, 48)
    corner = lat.patch((0, 0, 0))
    w = lat.patch_weights(corner)
    assert w[0, 0, 0] == 1.0
    naive = np.exp(bump_logits(out))
    assert naive[0, 0, 0] == 0.0
    total = np.zeros(shape)
    for p in lat.patches():
        (b, e) = p.output_box(out)
        wp = lat.patch_weights(p)
        assert np.all(np.isfinite(wp))
        total[b[0] : e[0], b[1] : e[1], b[2] : e[2]] += wp
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def _dense_reference_weights(lat: Lattice, shift, partner_in_crop=True):
    """Direct formula: per patch a dense volume of logits (-inf without weight), then
    w_k / sum_j w_j with w = exp(logit - max) (via blend_log_space on one-hot values)."""
    shape, out = lat.volume_shape, lat.output_patch
    patches = lat.patches()
    logits = np.full((len(patches),) + shape, -np.inf)
    base = bump_logits(out)
    for k, p in enumerate(patches):
        for idx in itertools.product(*(range(n) for n in out)):
            x = [o + i for o, i in zip(p.origin, idx)]
            q = [v + d for v, d in zip(x, shift)]
            if not all(0 <= v < n for v, n in zip(x, shape)) or not all(0 <= v < n for v, n in zip(q, shape)):
                continue
            if partner_in_crop and not all(0 <= i + d < n for i, d, n in zip(idx, shift, out)):
                continue
            logits[(k,) + tuple(x)] = base[idx]
    normalised = []
    for k in range(len(patches)):
        onehot = np.zeros_like(logits)
        onehot[k] = 1.0
        normalised.append(blend_log_space(onehot, logits))
    return patches, np.stack(normalised)


@pytest.mark.parametrize("shift", [(0, 0, 0), (-1, 0, 0), (0, -5, 0), (1, -5, 0), (-2, 0, 0), (0, 5, -5)])
@pytest.mark.parametrize("partner_in_crop", [True, False])
def test_separable_weights_equal_direct_formula(shift, partner_in_crop):
    shape, out = (7, 21, 19), (4, 12, 12)
    lat = Lattice(shape, out)
    patches, ref = _dense_reference_weights(lat, shift, partner_in_crop)
    for k, p in enumerate(patches):
        w = lat.patch_weights(p, shift, partner_in_crop)
        (b, e) = p.output_box(out)
        crop = ref[k][b[0] : e[0], b[1] : e[1], b[2] : e[2]]
        np.testing.assert_allclose(w[: crop.shape[0], : crop.shape[1], : crop.shape[2]], crop, rtol=1e-12, atol=1e-300)


def test_weights_sum_to_one_per_channel_and_zero_outside():
    shape, out = (12, 40, 40), (4, 16, 16)
    lat = Lattice(shape, out)
    for shift in PAPER_OFFSETS:
        total = np.zeros(shape)
        for p in lat.patches():
            (b, e) = p.output_box(out)
            total[b[0] : e[0], b[1] : e[1], b[2] : e[2]] += lat.patch_weights(p, shift)
        inside = np.ones(shape, bool)
        for a, d in enumerate(shift):
            sl = [slice(None)] * 3
            if d > 0:
                sl[a] = slice(shape[a] - d, None)
            elif d < 0:
                sl[a] = slice(0, -d)
            else:
                continue
            inside[tuple(sl)] = False
        np.testing.assert_allclose(total[inside], 1.0, rtol=0, atol=1e-12)
        assert np.all(total[~inside] == 0.0)


def test_small_volume_single_patch():
    lat = Lattice((3, 10, 50), (4, 16, 16))
    assert lat.grid_shape == (1, 1, 6)
    w = lat.patch_weights(lat.patch((0, 0, 0)))
    assert np.all(w[:3, :10, :8] > 0)  # inside the volume
    assert np.all(w[3:] == 0) and np.all(w[:, 10:] == 0)  # the crop part outside


def test_offset_too_long_for_overlap_raises():
    lat = Lattice((12, 40, 40), (4, 16, 16))
    with pytest.raises(ValueError, match="no patch"):
        lat.axis_weights(2, -12, True)
    lat.axis_weights(2, -12, False)  # affinity nets: the partner only has to be in the volume


def test_nearest_owner_partition():
    shape, out = (13, 41, 37), (4, 16, 16)
    lat = Lattice(shape, out)
    owned = np.zeros(shape, int)
    for p in lat.patches():
        ob = lat.owned_box(p)
        if ob is None:
            continue
        (b, e) = ob
        pb, pe = p.output_box(out)
        assert all(x0 <= y0 and y1 <= x1 for x0, x1, y0, y1 in zip(pb, pe, b, e))
        owned[b[0] : e[0], b[1] : e[1], b[2] : e[2]] += 1
    assert np.all(owned == 1)
    # along x: origins 0, 8, 16, 21 (centres 7.5, 15.5, 23.5, 28.5)
    assert lat.origins[2].tolist() == [0, 8, 16, 21]
    assert lat.axis_owner(2)[[0, 11, 12, 19, 20, 26, 27, 36]].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    "length,out,stride", [(37, 16, 8), (10, 16, 8), (16, 16, 8), (17, 16, 8), (300, 96, 48), (41, 5, 2), (50, 7, 3)]
)
def test_axis_owner_matches_brute_force(length, out, stride):
    lat = Lattice((1, 1, length), (1, 1, out), (1, 1, stride))
    o = lat.origins[2]
    x = np.arange(length)
    dist = np.abs(2 * x[None, :] - (2 * o[:, None] + out - 1)).astype(float)
    dist[~((x[None, :] >= o[:, None]) & (x[None, :] < o[:, None] + out))] = np.inf
    assert lat.axis_owner(2).tolist() == np.argmin(dist, axis=0).tolist()
    assert np.all(np.diff(lat.axis_owner(2)) >= 0)
