"""Glia-like objects that fill the space the neurites leave free.

Each glial cell is a random chain of seed points; every unclaimed voxel goes to
the nearest seed chain (anisotropic distance, computed on an in-plane
downsampled grid whose lookup is warped by smooth noise so that the borders
between glia are irregular).  Glia pieces too small to be plausible are given to
their neighbours.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from .components import connected_components
from .curves import unit
from .params import SynthParams
from .rasterize import absorb


def _seed_grid(rng, n_glia, small_shape, f, sz, world_hi):
    grid = np.zeros(small_shape, dtype=np.int32)
    Z, Ys, Xs = small_shape
    for g in range(n_glia):
        k = int(rng.integers(3, 10))
        p = rng.random(3) * world_hi
        pts = [p]
        d = unit(rng.standard_normal(3))
        for _ in range(k):
            d = unit(d + 0.9 * rng.standard_normal(3))
            p = p + rng.uniform(15.0, 45.0) * d
            pts.append(p)
        pts = np.array(pts)
        # dense polyline through the chain
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        s_new = np.arange(0.0, s[-1] + 1e-9, f)
        line = np.stack([np.interp(s_new, s, pts[:, j]) for j in range(3)], axis=1)
        zi = np.floor(line[:, 0] / sz).astype(int)
        yi = np.floor(line[:, 1] / f).astype(int)
        xi = np.floor(line[:, 2] / f).astype(int)
        ok = (zi >= 0) & (zi < Z) & (yi >= 0) & (yi < Ys) & (xi >= 0) & (xi < Xs)
        grid[zi[ok], yi[ok], xi[ok]] = g + 1
    return grid


def _warp(rng, small, amp):
    """Look the nearest-seed map up through a smooth random displacement."""
    Z, Ys, Xs = small.shape
    coarse = (Z, max(Ys // 4, 2), max(Xs // 4, 2))
    disp = []
    for _ in range(2):
        n = gaussian_filter(rng.standard_normal(coarse).astype(np.float32), (1.0, 1.5, 1.5), mode="wrap")
        n /= n.std() + 1e-6
        n = np.repeat(np.repeat(n, 4, axis=1), 4, axis=2)[:, :Ys, :Xs]
        if n.shape[1] < Ys or n.shape[2] < Xs:
            n = np.pad(n, ((0, 0), (0, Ys - n.shape[1]), (0, Xs - n.shape[2])), mode="edge")
        disp.append(gaussian_filter(n, (0.0, 2.0, 2.0)) * amp)
    zz, yy, xx = np.indices(small.shape, sparse=True)
    yw = np.clip(np.rint(yy + disp[0]).astype(np.int64), 0, Ys - 1)
    xw = np.clip(np.rint(xx + disp[1]).astype(np.int64), 0, Xs - 1)
    return small[zz, yw, xw]


def fill_glia(rng, part, n_parts: int, section_px: float, n_glia: int, params: SynthParams):
    """Assign every unclaimed voxel (``part == -1``) a glia part ``n_parts + g``.

    Modifies ``part`` in place; returns the number of glia ids used.  Small
    isolated glia pieces are absorbed into their in-plane neighbours.
    """
    Z, Y, X = part.shape
    f = int(params.glia_downsample)
    Ys, Xs = -(-Y // f), -(-X // f)
    seeds = _seed_grid(rng, n_glia, (Z, Ys, Xs), f, section_px, np.array([Z * section_px, Y, X], float))
    if not np.any(seeds):
        seeds[Z // 2, Ys // 2, Xs // 2] = 1
    idx = distance_transform_edt(seeds == 0, sampling=(section_px, f, f), return_distances=False, return_indices=True)
    nearest = seeds[idx[0], idx[1], idx[2]]
    del idx
    nearest = _warp(rng, nearest, amp=3.0)
    free = part < 0
    zz, yy, xx = np.nonzero(free)
    glia_id = nearest[zz, yy // f, xx // f]  # 1-based
    part[zz, yy, xx] = n_parts + glia_id - 1

    # absorb small glia pieces into whatever surrounds them
    lab = np.zeros(part.shape, dtype=np.int32)
    lab[zz, yy, xx] = glia_id
    comp, count = connected_components(lab)
    sizes = np.bincount(comp.ravel(), minlength=count + 1)
    small = sizes < params.glia_min_voxels
    small[0] = False
    todo = small[comp].astype(np.uint8)
    del comp, lab
    absorb(part, todo, params.absorb_iterations)
    return n_glia
