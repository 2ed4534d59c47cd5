"""Block grids, block keys and global voxel indices (all in voxels, z y x).

daisy's ``block_id`` is not a grid index; the grid index of a block is derived from
its write ROI offset relative to the grid origin.  Store keys are ``"z_y_x"`` strings
of that index.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
from funlib.geometry import Coordinate, Roi

Vec3 = tuple[int, int, int]


def as_vec3(values: Sequence[int]) -> Vec3:
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def grid_shape(volume_shape: Sequence[int], block_shape: Sequence[int]) -> Vec3:
    """Number of blocks per axis covering the volume (last blocks may be partial)."""
    return as_vec3(-(-int(v) // int(b)) for v, b in zip(volume_shape, block_shape))


def block_index(write_roi: Roi, volume_roi: Roi, block_shape: Sequence[int]) -> Vec3:
    """Grid index of a block from its write ROI offset (never from daisy's block_id)."""
    rel = Coordinate(write_roi.offset) - Coordinate(volume_roi.offset)
    idx = []
    for r, b in zip(rel, block_shape):
        if r % b:
            raise ValueError(f"write ROI {write_roi} is not on the block grid {tuple(block_shape)} of {volume_roi}")
        idx.append(r // b)
    return as_vec3(idx)


def block_key(index: Sequence[int]) -> str:
    return "_".join(str(int(i)) for i in index)


def parse_block_key(key: str) -> Vec3:
    parts = key.split("_")
    if len(parts) != 3:
        raise ValueError(f"not a block key: {key!r}")
    return as_vec3(int(p) for p in parts)


def block_roi(index: Sequence[int], volume_roi: Roi, block_shape: Sequence[int]) -> Roi:
    """Write ROI of grid block ``index``, cropped to the volume."""
    offset = Coordinate(volume_roi.offset) + Coordinate(i * b for i, b in zip(index, block_shape))
    return Roi(offset, Coordinate(block_shape)).intersect(volume_roi)


def iter_blocks(volume_roi: Roi, block_shape: Sequence[int]) -> Iterator[tuple[Vec3, Roi]]:
    for index in itertools.product(*(range(n) for n in grid_shape(volume_roi.shape, block_shape))):
        yield as_vec3(index), block_roi(index, volume_roi, block_shape)


def raster_index(coords: np.ndarray, volume_shape: Sequence[int]) -> np.ndarray:
    """Global raster index ``z * Y * X + y * X + x`` of (N, 3) voxel coords relative to the
    volume origin (int64)."""
    coords = np.asarray(coords, dtype=np.int64)
    _, vy, vx = (int(v) for v in volume_shape)
    return (coords[..., 0] * vy + coords[..., 1]) * vx + coords[..., 2]


def unravel_raster(index: np.ndarray, volume_shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`raster_index`: (N, 3) coords."""
    index = np.asarray(index, dtype=np.int64)
    _, vy, vx = (int(v) for v in volume_shape)
    z, rest = np.divmod(index, vy * vx)
    y, x = np.divmod(rest, vx)
    return np.stack([z, y, x], axis=-1)


def fragment_block_index(fragment_ids: np.ndarray, volume_shape: Sequence[int], block_shape: Sequence[int]) -> np.ndarray:
    """Grid index (N, 3) of the block holding each fragment (id = 1 + raster index)."""
    coords = unravel_raster(np.asarray(fragment_ids, dtype=np.int64) - 1, volume_shape)
    return coords // np.asarray(block_shape, dtype=np.int64)


def region_of_blocks(block_idx: np.ndarray, fanout: Sequence[int], level: int) -> np.ndarray:
    """Region index at a hierarchy level (level 1 = fanout blocks per axis)."""
    factor = np.asarray([int(f) ** level for f in fanout], dtype=np.int64)
    return np.asarray(block_idx, dtype=np.int64) // factor


def slices_of(inner: Roi, outer: Roi) -> tuple[slice, ...]:
    """Slices selecting ``inner`` inside an array that covers ``outer``."""
    if not outer.contains(inner):
        raise ValueError(f"{inner} is not inside {outer}")
    begin = Coordinate(inner.begin) - Coordinate(outer.begin)
    return tuple(slice(int(b), int(b) + int(s)) for b, s in zip(begin, inner.shape))
