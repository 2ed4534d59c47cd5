"""Global edge keys: bijective tie-breaks, uniqueness, order semantics."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from embedseg_daisy.mws import keys as K


@numba.njit
def _roundtrip(xs, bits):
    out = np.empty_like(xs)
    for i in range(xs.size):
        if bits == K.KEY_BITS:
            out[i] = K.unmix_key(K.mix_key(xs[i]))
        else:
            out[i] = K.unmix_tile(K.mix_tile(xs[i]))
    return out


@numba.njit
def _mixed(xs, bits):
    out = np.empty_like(xs)
    for i in range(xs.size):
        out[i] = K.mix_key(xs[i]) if bits == K.KEY_BITS else K.mix_tile(xs[i])
    return out


@numba.njit
def _decode(keys, vz, vy, vx, mode):
    out = np.empty((keys.size, 4), np.int64)
    for i in range(keys.size):
        k, z, y, x = K.decode_tiebreak(keys[i] & np.uint64((1 << K.KEY_BITS) - 1), vz, vy, vx, mode)
        out[i, 0] = k
        out[i, 1] = z
        out[i, 2] = y
        out[i, 3] = x
    return out


@pytest.mark.parametrize("bits", [K.KEY_BITS, K.TILE_ID_BITS])
def test_mix_is_a_bijection(bits):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 1 << bits, 20000, dtype=np.uint64)
    xs[:3] = [0, 1, (1 << bits) - 1]
    assert np.array_equal(_roundtrip(xs, bits), xs)
    mixed = _mixed(xs, bits)
    assert mixed.max() < (1 << bits)
    assert len(np.unique(mixed)) == len(np.unique(xs))
    small = np.arange(4096, dtype=np.uint64)  # neighbouring ids scatter
    assert len(np.unique(_mixed(small, bits) >> np.uint64(bits - 8))) > 200


@pytest.mark.parametrize("mode", ["raster", "tile", "hash"])
def test_keys_unique_and_decodable(mode):
    vshape = (7, 21, 35)
    nk = 5
    k, z, y, x = (a.ravel() for a in np.meshgrid(*(np.arange(s) for s in (nk,) + vshape), indexing="ij"))
    prio = np.full(k.size, 200, np.uint8)
    keys = K.edge_keys(prio, k, z, y, x, vshape, mode)
    assert len(np.unique(keys)) == keys.size
    assert np.all(K.key_priority(keys) == 200)
    assert K.edge_keys(np.uint8(255), nk - 1, *(s - 1 for s in vshape), vshape, mode) < 1 << 63
    dec = _decode(keys, *vshape, K.tiebreak_mode(mode))
    assert np.array_equal(dec, np.stack([k, z, y, x], axis=1))


def test_priority_dominates_and_raster_order():
    vshape = (4, 8, 8)
    hi = K.edge_keys(np.uint8(10), 0, 0, 0, 0, vshape, "raster")
    lo = K.edge_keys(np.uint8(9), 11, 3, 7, 7, vshape, "raster")
    assert hi > lo
    # equal priority, raster tie-break: larger (k, z, y, x) first
    a = K.edge_keys(np.uint8(5), 1, 0, 0, 0, vshape, "raster")
    b = K.edge_keys(np.uint8(5), 0, 3, 7, 7, vshape, "raster")
    assert a > b


def test_keys_depend_on_global_coordinates_only():
    """The same edge gets the same key whatever block computes it."""
    vshape = (16, 64, 64)
    for mode in ("raster", "tile", "hash"):
        g = K.edge_keys(np.uint8(77), 3, 9, 40, 17, vshape, mode)
        origin = np.array([8, 32, 0])
        local = np.array([1, 8, 17])
        again = K.edge_keys(np.uint8(77), 3, *(origin + local), vshape, mode)
        assert g == again


def test_key_space_checked():
    with pytest.raises(ValueError):
        K.check_key_space(12, (1 << 20, 1 << 20, 1 << 15))
    with pytest.raises(ValueError):
        K.tiebreak_mode("nope")
