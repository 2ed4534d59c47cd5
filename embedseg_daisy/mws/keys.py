"""Global edge keys: one total order of voxel edges shared by every block.

An edge is channel ``k`` at owner voxel ``p`` (global coordinates ``gz, gy, gx``),
i.e. the edge ``(p, p + offsets[k])``.  Its *global edge id* is::

    gid = ((k * VZ + gz) * VY + gy) * VX + gx

with ``(VZ, VY, VX)`` the shape of the whole volume.  Its key is::

    key = (priority_u8 << 55) | tiebreak(gid)

where ``priority`` is the affinity level (attractive channels) or ``255 - level``
(repulsive channels) and ``tiebreak`` is a *bijection* of ``[0, 2**55)``, so two
different edges never share a key (``K * VZ * VY * VX < 2**55`` is checked) and every
key is < 2**63 (storable as a signed 64-bit integer, e.g. in BSON).  The
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
    a bijective hash of the tile ``(k, gz // 4, gy // 16, gx // 16)`` in the high 45
    bits, raster order inside the tile in the low 10 bits.
``TIEBREAK_HASH``
    a bijective 55-bit hash of ``gid`` (a collision-free variant of
    ``splitmix64(gid) >> 9``).

All three give exact, block-composable results; they differ only in how uint8 ties
are resolved and in speed (see ``benchmarks/mws_kernel.py``).
"""

from __future__ import annotations

import numpy as np

from .kernels import (  # noqa: F401  (re-exported: numba helpers of the key space)
    DEFAULT_TIEBREAK,
    KEY_BITS,
    TIEBREAK_HASH,
    TIEBREAK_RASTER,
    TIEBREAK_TILE,
    TIEBREAKS,
    TILE_BITS,
    TILE_ID_BITS,
    _keys_loop,
    decode_tiebreak,
    mix_key,
    mix_tile,
    tiebreak,
    unmix_key,
    unmix_tile,
)


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
    """Raise if global edge ids would not fit the KEY_BITS tie-break bits."""
    vz, vy, vx = (int(s) for s in volume_shape)
    if vz <= 0 or vy <= 0 or vx <= 0:
        raise ValueError(f"volume shape must be positive, got {tuple(volume_shape)}")
    if num_channels * vz * vy * vx >= 1 << KEY_BITS:
        raise ValueError(
            f"{num_channels} channels x volume {tuple(volume_shape)} exceed the 2**{KEY_BITS} global edge ids"
        )
    if num_channels * ((vz + 3) >> 2) * ((vy + 15) >> 4) * ((vx + 15) >> 4) >= 1 << TILE_ID_BITS:
        raise ValueError("volume too large for the tile tie-break")


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
    return (np.asarray(keys, np.uint64) >> np.uint64(KEY_BITS)).astype(np.uint8)
