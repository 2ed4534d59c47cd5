"""6-connected components of equal labels (numba union-find).

Used to make ground truth honest: an object id that falls into several
6-connected pieces keeps its id on the largest piece and every other piece gets a
new id, so no id claims a connection that nearest-neighbour edges cannot show.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@numba.njit(cache=True, inline="always")
def _union(parent, a, b):
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra == rb:
        return
    if ra < rb:
        parent[rb] = ra
    else:
        parent[ra] = rb


@numba.njit(cache=True, nogil=True)
def _components(labels):
    """Component index (1-based, numbered in raster order of first voxel) for
    every non-zero voxel; voxels are joined when 6-adjacent with equal labels."""
    Z, Y, X = labels.shape
    n = Z * Y * X
    flat = labels.ravel()
    parent = np.arange(n, dtype=np.int64)
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                i = (z * Y + y) * X + x
                v = flat[i]
                if v == 0:
                    continue
                if x > 0 and flat[i - 1] == v:
                    _union(parent, i, i - 1)
                if y > 0 and flat[i - X] == v:
                    _union(parent, i, i - X)
                if z > 0 and flat[i - X * Y] == v:
                    _union(parent, i, i - X * Y)
    comp = np.zeros(n, dtype=np.int64)
    count = 0
    for i in range(n):
        if flat[i] == 0:
            continue
        r = _find(parent, i)
        if r == i:
            count += 1
            comp[i] = count
        else:
            comp[i] = comp[r]  # roots are the smallest index, visited first
    return comp.reshape(labels.shape), count


def connected_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(component index per voxel, number of components); 0 stays 0."""
    return _components(np.ascontiguousarray(labels))


def split_disconnected(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel so that every id is exactly one 6-connected component.

    Returns ``(new_labels, origin)`` where ``new_labels`` are uint64 ids numbered
    1..M in raster order of each component's first voxel and ``origin[k]`` is the
    input id that new id ``k`` came from (``origin[0] = 0``).
    """
    comp, count = connected_components(labels)
    flat_comp = comp.ravel()
    flat_lab = labels.ravel()
    nz = np.flatnonzero(flat_comp)
    origin = np.zeros(count + 1, dtype=np.uint64)
    # first voxel of each component carries its label
    first = np.full(count + 1, -1, dtype=np.int64)
    order = nz[::-1]
    first[flat_comp[order]] = order  # last write wins -> the smallest index
    origin[1:] = flat_lab[first[1:]]
    return comp.astype(np.uint64), origin


def small_pieces(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Boolean mask of the voxels of 6-connected pieces smaller than ``min_size``."""
    comp, count = connected_components(labels)
    sizes = np.bincount(comp.ravel(), minlength=count + 1)
    small = sizes < int(min_size)
    small[0] = False
    return small[comp]
