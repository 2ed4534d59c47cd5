"""Baseline oversegmentation: the watershed of Zlateski & Seung (2015), Fig. S10.

Four steps on nearest-neighbour affinities ``affs_nn`` (float, ``(3, Z, Y, X)``):

1. **Steepest-ascent watershed with T_min / T_max** -- waterz's built-in watershed
   (``basic_watershed.hpp``).  Edges with affinity <= ``t_min`` are never followed
   (a voxel with no edge above ``t_min`` becomes background 0); edges >= ``t_max``
   are all treated as maximal, so high-affinity plateaus become one basin.
2. **Basin graph**: adjacent basins are joined by the *maximum* affinity over the
   voxel edges between them.
3. **Size-dependent single linkage** (T_size = (``size_threshold``,
   ``size_affinity``)): basin-graph edges in decreasing affinity (ties: smaller
   basin pair first), stopping at the first edge below ``size_affinity``; an edge
   merges its two current regions if at least one of them has fewer than
   ``size_threshold`` voxels.
4. **Dust removal** (T_dust = ``dust``): every region that still has fewer than
   ``dust`` voxels is removed, i.e. set to background 0 -- Zlateski & Seung's
   definition (their ``merge_segments_with_function`` drops segments below the low
   size threshold to 0), not a merge into a neighbour.  After step 3 such a region
   touches no neighbour through an edge >= ``size_affinity``.

Affinity convention (ours == waterz's, pinned by ``tests/test_baseline.py``): channel
``c`` at voxel ``p`` is the affinity of the edge between ``p`` and the voxel one step
*behind* along axis ``c`` (offsets ``(-1,0,0), (0,-1,0), (0,0,-1)``; channel order
z, y, x).  Values on the first slice along each channel's axis have no partner and
are ignored.  ``embedseg_daisy.offsets.BASELINE_NEAREST`` lists these offsets.

Fragment ids: ``1 +`` the raster index (within the given array) of the fragment's
first voxel; background is 0.  They are deterministic and need no coordination; a
blockwise caller adds its own global offset convention.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["check_affinities_nn", "watershed_fragments", "waterz_basins"]


def check_affinities_nn(affs_nn) -> np.ndarray:
    """``affs_nn`` as a C-contiguous float32 ``(3, Z, Y, X)`` array (no copy if it is one)."""
    affs = np.asarray(affs_nn)
    if affs.ndim != 4 or affs.shape[0] != 3:
        raise ValueError(f"affs_nn must have the shape (3, Z, Y, X), not {affs.shape}")
    if not np.issubdtype(affs.dtype, np.floating):
        raise TypeError(f"affs_nn must be floating point affinities in [0, 1], not {affs.dtype}")
    return np.ascontiguousarray(affs, dtype=np.float32)


def waterz_basins(affs_nn, t_min: float = 0.01, t_max: float = 0.99) -> np.ndarray:
    """Step 1 only: waterz's steepest-ascent watershed, basins ``1..n`` (uint64), 0 = none.

    waterz never writes the affinities (they are a const buffer in C++); the
    segmentation it yields is its own array and is copied before the generator is
    closed.
    """
    import waterz

    affs = check_affinities_nn(affs_nn)
    if not t_min < t_max:
        raise ValueError(f"t_min ({t_min}) must be smaller than t_max ({t_max})")
    # a threshold of -inf makes waterz skip merging altogether (it returns early when
    # the threshold is <= the lowest score), so the yield is the raw watershed
    gen = waterz.agglomerate(affs, [float("-inf")], aff_threshold_low=float(t_min), aff_threshold_high=float(t_max))
    basins = np.array(next(gen), dtype=np.uint64, copy=True)
    for _ in gen:  # exhaust: frees waterz's state
        pass
    return basins


@numba.njit(cache=True, nogil=True)
def _basin_edges(seg, affs):
    """Max affinity per adjacent basin pair: (lo, hi, w) sorted by (lo, hi)."""
    Z, Y, X = seg.shape
    count = 0
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                a = seg[z, y, x]
                if a == 0:
                    continue
                if z > 0 and seg[z - 1, y, x] != a and seg[z - 1, y, x] != 0:
                    count += 1
                if y > 0 and seg[z, y - 1, x] != a and seg[z, y - 1, x] != 0:
                    count += 1
                if x > 0 and seg[z, y, x - 1] != a and seg[z, y, x - 1] != 0:
                    count += 1
    lo = np.empty(count, np.int64)
    hi = np.empty(count, np.int64)
    w = np.empty(count, np.float32)
    k = 0
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                a = np.int64(seg[z, y, x])
                if a == 0:
                    continue
                for c in range(3):
                    if c == 0:
                        if z == 0:
                            continue
                        b = np.int64(seg[z - 1, y, x])
                    elif c == 1:
                        if y == 0:
                            continue
                        b = np.int64(seg[z, y - 1, x])
                    else:
                        if x == 0:
                            continue
                        b = np.int64(seg[z, y, x - 1])
                    if b == a or b == 0:
                        continue
                    lo[k] = min(a, b)
                    hi[k] = max(a, b)
                    w[k] = affs[c, z, y, x]
                    k += 1
    return lo, hi, w


def _reduce_max(lo, hi, w):
    if lo.size == 0:
        return lo, hi, w
    order = np.lexsort((hi, lo))
    lo, hi, w = lo[order], hi[order], w[order]
    new = np.ones(lo.size, bool)
    new[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    starts = np.flatnonzero(new)
    return lo[starts], hi[starts], np.maximum.reduceat(w, starts)


@numba.njit(cache=True, inline="always")
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _size_single_linkage(n, lo, hi, w, sizes, size_threshold, size_affinity):
    """Union-find over edges sorted by decreasing w; returns the root of every basin."""
    parent = np.arange(n + 1)
    sizes = sizes.copy()
    for k in range(lo.size):
        if w[k] < size_affinity:
            break
        ra = _find(parent, lo[k])
        rb = _find(parent, hi[k])
        if ra == rb:
            continue
        if sizes[ra] < size_threshold or sizes[rb] < size_threshold:
            if sizes[ra] < sizes[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            sizes[ra] += sizes[rb]
    roots = np.empty(n + 1, np.int64)
    for i in range(n + 1):
        roots[i] = _find(parent, i)
    return roots, sizes


@numba.njit(cache=True, nogil=True)
def _relabel_first_voxel(seg, lut):
    """out = 1 + raster index of the first voxel of each label lut[seg] (lut < 0: background)."""
    flat = seg.ravel()
    first = np.zeros(lut.size, np.uint64)
    out = np.zeros(flat.size, np.uint64)
    for i in range(flat.size):
        r = lut[flat[i]]
        if r < 0:
            continue
        if first[r] == 0:
            first[r] = i + 1
        out[i] = first[r]
    return out.reshape(seg.shape)


def watershed_fragments(
    affs_nn,
    *,
    t_min: float = 0.01,
    t_max: float = 0.99,
    size_threshold: int = 150,
    size_affinity: float = 0.01,
    dust: int = 150,
) -> np.ndarray:
    """Zlateski-Seung watershed fragments (uint64, 0 = background) of ``affs_nn``.

    Defaults are Fig. S10 at 12 nm: T_min 1 %, T_max 99 %, T_size (150, 1 %),
    T_dust 150.  ``size_threshold=0`` disables single linkage, ``dust=0`` dust
    removal.  See the module docstring for the steps, the affinity convention and
    the fragment ids.  The input is never modified.
    """
    affs = check_affinities_nn(affs_nn)
    basins = waterz_basins(affs, t_min, t_max)
    n = int(basins.max()) if basins.size else 0
    sizes = np.bincount(basins.ravel(), minlength=n + 1).astype(np.int64)
    sizes[0] = 0
    lo, hi, w = _reduce_max(*_basin_edges(basins, affs))
    # decreasing affinity, ties by (lo, hi): deterministic
    order = np.lexsort((hi, lo, -w.astype(np.float64)))
    roots, root_sizes = _size_single_linkage(
        n, lo[order], hi[order], w[order], sizes, int(size_threshold), float(size_affinity)
    )
    lut = roots.copy()
    lut[0] = -1
    if dust > 0:
        lut[root_sizes[roots] < dust] = -1
    return _relabel_first_voxel(basins, lut)
