"""Fragments of one block: global ids and per-fragment statistics.

A fragment's id is ``1 + the global raster index of its first voxel`` (raster order
over the whole volume), so ids need no coordination between workers, do not depend
on the block size, and map back to their block.  Statistics are additive or
min/max-composable, so section 2.3's means can be composed across blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .geometry import raster_index


@dataclass
class FragmentTable:
    ids: np.ndarray  # int64
    sizes: np.ndarray  # int64
    centroids: np.ndarray  # (N, 3) float64, global voxel coordinates
    bboxes: np.ndarray  # (N, 6) int64: z0 y0 x0 z1 y1 x1 (end exclusive), global voxels
    embedding_sums: np.ndarray | None = None  # (N, D) float64
    frozen: np.ndarray | None = None  # bool


def global_fragment_ids(
    local: np.ndarray, block_offset: tuple[int, int, int], volume_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relabel a block's local labels (0 = background) to global fragment ids.

    ``block_offset`` is the block's position in voxels relative to the volume origin.
    Returns ``(ids_array uint64, local_labels, global_ids)`` with ``local_labels`` the
    distinct nonzero local labels and ``global_ids`` their fragment ids."""
    flat = local.ravel()
    labels, first = np.unique(flat, return_index=True)
    keep = labels != 0
    labels, first = labels[keep], first[keep]
    coords = np.stack(np.unravel_index(first, local.shape), axis=-1) + np.asarray(block_offset, np.int64)
    gids = raster_index(coords, volume_shape) + 1
    out = np.zeros(local.shape, np.uint64)
    if len(labels):
        pos = np.searchsorted(labels, flat)
        pos = np.minimum(pos, len(labels) - 1)
        mapped = gids[pos].astype(np.uint64)
        mapped[flat == 0] = 0
        out = mapped.reshape(local.shape)
    return out, labels, gids


@numba.njit(cache=True)
def _stats(index, n, oz, oy, ox):
    sizes = np.zeros(n, np.int64)
    sums = np.zeros((n, 3), np.float64)
    bbox = np.empty((n, 6), np.int64)
    for i in range(n):
        bbox[i, 0] = bbox[i, 1] = bbox[i, 2] = np.iinfo(np.int64).max
        bbox[i, 3] = bbox[i, 4] = bbox[i, 5] = np.iinfo(np.int64).min
    Z, Y, X = index.shape
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                k = index[z, y, x]
                if k < 0:
                    continue
                gz, gy, gx = z + oz, y + oy, x + ox
                sizes[k] += 1
                sums[k, 0] += gz
                sums[k, 1] += gy
                sums[k, 2] += gx
                if gz < bbox[k, 0]:
                    bbox[k, 0] = gz
                if gy < bbox[k, 1]:
                    bbox[k, 1] = gy
                if gx < bbox[k, 2]:
                    bbox[k, 2] = gx
                if gz + 1 > bbox[k, 3]:
                    bbox[k, 3] = gz + 1
                if gy + 1 > bbox[k, 4]:
                    bbox[k, 4] = gy + 1
                if gx + 1 > bbox[k, 5]:
                    bbox[k, 5] = gx + 1
    return sizes, sums, bbox


@numba.njit(cache=True)
def _embedding_sums(index, emb, n):
    D = emb.shape[0]
    out = np.zeros((n, D), np.float64)
    Z, Y, X = index.shape
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                k = index[z, y, x]
                if k < 0:
                    continue
                for d in range(D):
                    out[k, d] += emb[d, z, y, x]
    return out


def fragment_table(
    fragments: np.ndarray,
    block_offset: tuple[int, int, int],
    *,
    embeddings: np.ndarray | None = None,
) -> FragmentTable:
    """Statistics of every fragment in a block array of global fragment ids.

    ``block_offset`` is the block's offset in voxels relative to the volume origin;
    centroids and boxes are in that global frame."""
    ids, inverse = np.unique(fragments, return_inverse=True)
    inverse = inverse.reshape(fragments.shape).astype(np.int64)
    if len(ids) and ids[0] == 0:
        ids = ids[1:]
        inverse -= 1  # background becomes -1
    else:
        pass
    n = len(ids)
    sizes, sums, bbox = _stats(inverse, n, *(int(o) for o in block_offset))
    centroids = sums / np.maximum(sizes, 1)[:, None]
    emb_sums = None
    if embeddings is not None:
        emb_sums = _embedding_sums(inverse, np.ascontiguousarray(embeddings, np.float32), n)
    return FragmentTable(ids.astype(np.int64), sizes, centroids, bbox, emb_sums)
