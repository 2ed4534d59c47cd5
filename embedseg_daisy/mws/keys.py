"""Global edge keys: one total order of voxel edges shared by every block.

An edge is channel ``k`` at owner voxel ``p`` (global coordinates ``gz, gy, gx``),
i.e. the edge ``(p, p + offsets[k])``.  Its *global edge id* is::

    gid = ((k * VZ + gz) * VY + gy) * VX + gx

with ``(VZ, VY, VX)`` the shape of the whole volume.  Its key is::

    key = (priority_u8 << 56) | tiebreak(gid)

where ``priority`` is the affinity level (attractive channels) or ``255 - level``
(repulsive channels) and ``tiebreak`` is a *bijection* of ``[0, 2**56)``, so two
different edges never share a key (``K * VZ * VY * VX < 2**56`` is checked).  The
Mutex Watershed processes edges by key descending; because the key depends on global
coordinates only, the order restricted to a block is the global order restricted,
and the maximum key over the voxel edges between two fragments identifies a unique
voxel edge.

Three tie-breaks (all functions of global coordinates only):

``TIEBREAK_RASTER`` (the default)
    ``tiebreak = gid``: ties are processed in descending ``(k, gz, gy, gx)`` order.
    The kernel then needs no sort at all (a counting sort on the priority byte over a
    raster sweep yields the exact order) and union-find accesses are sequential.
``TIEBREAK_TILE``
    a bijective hash of the tile ``(k, gz // 4, gy // 16, gx // 16)`` in the high 46
    bits, raster order inside the tile in the low 10 bits.
``TIEBREAK_HASH``
    a bijective 56-bit hash of ``gid`` (a collision-free variant of
    ``splitmix64(gid) >> 8``).

All three give exact, block-composable results; they differ only in how uint8 ties
are resolved and in speed (see ``benchmarks/mws_kernel.py``).
"""

from __future__ import annotations

import numba
import numpy as np

TIEBREAK_RASTER = 0
TIEBREAK_TILE = 1
TIEBREAK_HASH = 2
TIEBREAKS = {"raster": TIEBREAK_RASTER, "tile": TIEBREAK_TILE, "hash": TIEBREAK_HASH}
DEFAULT_TIEBREAK = TIEBREAK_RASTER

#: Tile shape of ``TIEBREAK_TILE`` (z, y, x), as log2 sizes.
TILE_BITS = (2, 4, 4)
_INTRA_BITS = sum(TILE_BITS)

KEY_BITS = 56
_MASK56 = (1 << 56) - 1
_MASK46 = (1 << 46) - 1

# Odd multipliers (from splitmix64 / murmur finalisers), truncated.
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_C3 = 0xFF51AFD7ED558CCD


def _odd(c: int, bits: int) -> int:
    return (c & ((1 << bits) - 1)) | 1


_M56 = (_odd(_C1, 56), _odd(_C2, 56), _odd(_C3, 56))
_M56_INV = tuple(pow(m, -1, 1 << 56) for m in _M56)
_M46 = (_odd(_C1, 46), _odd(_C2, 46), _odd(_C3, 46))
_M46_INV = tuple(pow(m, -1, 1 << 46) for m in _M46)

U56 = np.uint64(_MASK56)
U46 = np.uint64(_MASK46)
A1, A2, A3 = (np.uint64(m) for m in _M56)
A1I, A2I, A3I = (np.uint64(m) for m in _M56_INV)
B1, B2, B3 = (np.uint64(m) for m in _M46)
B1I, B2I, B3I = (np.uint64(m) for m in _M46_INV)
S28 = np.uint64(28)
S29 = np.uint64(29)
S23 = np.uint64(23)
S24 = np.uint64(24)
S56 = np.uint64(56)
SINTRA = np.uint64(_INTRA_BITS)
UINTRA = np.uint64((1 << _INTRA_BITS) - 1)
TZB, TYB, TXB = (np.uint64(b) for b in TILE_BITS)


@numba.njit(cache=True, inline="always")
def mix56(x):
    """Bijection of [0, 2**56) (multiply / xorshift rounds modulo 2**56)."""
    x = (np.uint64(x) * A1) & U56
    x ^= x >> S28
    x = (x * A2) & U56
    x ^= x >> S29
    x = (x * A3) & U56
    x ^= x >> S28
    return x


@numba.njit(cache=True, inline="always")
def unmix56(x):
    """Inverse of :func:`mix56`."""
    x = np.uint64(x)
    x ^= x >> S28
    x = (x * A3I) & U56
    x ^= x >> S29
    x = (x * A2I) & U56
    x ^= x >> S28
    x = (x * A1I) & U56
    return x


@numba.njit(cache=True, inline="always")
def mix46(x):
    """Bijection of [0, 2**46)."""
    x = (np.uint64(x) * B1) & U46
    x ^= x >> S23
    x = (x * B2) & U46
    x ^= x >> S24
    x = (x * B3) & U46
    x ^= x >> S23
    return x


@numba.njit(cache=True, inline="always")
def unmix46(x):
    """Inverse of :func:`mix46`."""
    x = np.uint64(x)
    x ^= x >> S23
    x = (x * B3I) & U46
    x ^= x >> S24
    x = (x * B2I) & U46
    x ^= x >> S23
    x = (x * B1I) & U46
    return x


@numba.njit(cache=True, inline="always")
def tiebreak(k, gz, gy, gx, vz, vy, vx, mode):
    """56-bit tie-break of edge (k, gz, gy, gx) in a volume of shape (vz, vy, vx)."""
    if mode == TIEBREAK_TILE:
        tz = gz >> 2
        ty = gy >> 4
        tx = gx >> 4
        ntz = (vz + 3) >> 2
        nty = (vy + 15) >> 4
        ntx = (vx + 15) >> 4
        tile = ((k * ntz + tz) * nty + ty) * ntx + tx
        intra = ((gz & 3) << 8) | ((gy & 15) << 4) | (gx & 15)
        return (mix46(np.uint64(tile)) << SINTRA) | np.uint64(intra)
    gid = np.uint64(((k * vz + gz) * vy + gy) * vx + gx)
    if mode == TIEBREAK_HASH:
        return mix56(gid)
    return gid


@numba.njit(cache=True, inline="always")
def decode_tiebreak(t, vz, vy, vx, mode):
    """Inverse of :func:`tiebreak`: returns (k, gz, gy, gx)."""
    t = np.uint64(t)
    if mode == TIEBREAK_TILE:
        tile = np.int64(unmix46(t >> SINTRA))
        intra = np.int64(t & UINTRA)
        ntz = (vz + 3) >> 2
        nty = (vy + 15) >> 4
        ntx = (vx + 15) >> 4
        tx = tile % ntx
        tile //= ntx
        ty = tile % nty
        tile //= nty
        tz = tile % ntz
        k = tile // ntz
        return k, (tz << 2) | (intra >> 8), (ty << 4) | ((intra >> 4) & 15), (tx << 4) | (intra & 15)
    if mode == TIEBREAK_HASH:
        t = unmix56(t)
    g = np.int64(t)
    gx = g % vx
    g //= vx
    gy = g % vy
    g //= vy
    gz = g % vz
    return g // vz, gz, gy, gx


def tiebreak_mode(mode) -> int:
    """Normalise a tie-break given by name or constant."""
    if isinstance(mode, str):
        try:
            return TIEBREAKS[mode]
        except KeyError:
            raise ValueError(f"unknown tie-break {mode!r}; choose one of {sorted(TIEBREAKS)}") from None
    mode = int(mode)
    if mode not in TIEBREAKS.values():
        raise ValueError(f"unknown tie-break {mode}")
    return mode


def check_key_space(num_channels: int, volume_shape) -> None:
    """Raise if global edge ids would not fit the 56 tie-break bits."""
    vz, vy, vx = (int(s) for s in volume_shape)
    if vz <= 0 or vy <= 0 or vx <= 0:
        raise ValueError(f"volume shape must be positive, got {tuple(volume_shape)}")
    if num_channels * vz * vy * vx >= 1 << KEY_BITS:
        raise ValueError(
            f"{num_channels} channels x volume {tuple(volume_shape)} exceed the 2**56 global edge ids"
        )
    if num_channels * ((vz + 3) >> 2) * ((vy + 15) >> 4) * ((vx + 15) >> 4) >= 1 << 46:
        raise ValueError("volume too large for the tile tie-break")


@numba.njit(cache=True)
def _keys_loop(priority, k, gz, gy, gx, vz, vy, vx, mode, out):
    for i in range(out.size):
        t = tiebreak(np.int64(k[i]), np.int64(gz[i]), np.int64(gy[i]), np.int64(gx[i]), vz, vy, vx, mode)
        out[i] = (np.uint64(priority[i]) << S56) | t


def edge_keys(priority, k, gz, gy, gx, volume_shape, tiebreak_mode_=DEFAULT_TIEBREAK) -> np.ndarray:
    """Keys (uint64) of edges given by uint8 priority, channel and global owner voxel.

    All array arguments broadcast together.  ``priority`` is the affinity level for
    attractive channels and ``255 - level`` for repulsive ones.
    """
    mode = tiebreak_mode(tiebreak_mode_)
    arrs = np.broadcast_arrays(
        np.asarray(priority, np.uint8),
        np.asarray(k, np.int64),
        np.asarray(gz, np.int64),
        np.asarray(gy, np.int64),
        np.asarray(gx, np.int64),
    )
    shape = arrs[0].shape
    flat = [np.ascontiguousarray(a).ravel() for a in arrs]
    vz, vy, vx = (int(s) for s in volume_shape)
    check_key_space(int(flat[1].max(initial=0)) + 1, (vz, vy, vx))
    out = np.empty(flat[0].size, np.uint64)
    _keys_loop(*flat, vz, vy, vx, mode, out)
    return out.reshape(shape)


def key_priority(keys) -> np.ndarray:
    """The uint8 priority stored in the top byte of keys."""
    return (np.asarray(keys, np.uint64) >> np.uint64(56)).astype(np.uint8)
