"""Coarse occupancy grid used to pack neurites densely without large overlaps.

Each accepted skeleton stamps its *core* (a fraction of its radius) into a grid of
``cell`` world pixels; a candidate is rejected when too many of its samples would
put their core into a cell owned by another branch.  Branches of the same object
that are allowed to overlap (a spine and its parent dendrite) are exempted.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _check(occ, cell, pts, radii, core_frac, own, parent):
    nz, ny, nx = occ.shape
    flags = np.zeros(pts.shape[0], dtype=np.uint8)
    for i in range(pts.shape[0]):
        rc = max(core_frac * radii[i], 0.5 * cell)
        cz, cy, cx = pts[i, 0] / cell, pts[i, 1] / cell, pts[i, 2] / cell
        rr = rc / cell
        z0, z1 = int(np.floor(cz - rr)), int(np.floor(cz + rr))
        y0, y1 = int(np.floor(cy - rr)), int(np.floor(cy + rr))
        x0, x1 = int(np.floor(cx - rr)), int(np.floor(cx + rr))
        hit = False
        for z in range(max(z0, 0), min(z1, nz - 1) + 1):
            if hit:
                break
            for y in range(max(y0, 0), min(y1, ny - 1) + 1):
                if hit:
                    break
                for x in range(max(x0, 0), min(x1, nx - 1) + 1):
                    dz = z + 0.5 - cz
                    dy = y + 0.5 - cy
                    dx = x + 0.5 - cx
                    if dz * dz + dy * dy + dx * dx > rr * rr + 0.25:
                        continue
                    v = occ[z, y, x] - 1
                    if v >= 0 and v != own and v != parent:
                        hit = True
                        break
        if hit:
            flags[i] = 1
    return flags


@numba.njit(cache=True, nogil=True)
def _stamp(occ, cell, pts, radii, core_frac, own):
    nz, ny, nx = occ.shape
    filled = 0
    for i in range(pts.shape[0]):
        rc = max(core_frac * radii[i], 0.5 * cell)
        cz, cy, cx = pts[i, 0] / cell, pts[i, 1] / cell, pts[i, 2] / cell
        rr = rc / cell
        z0, z1 = int(np.floor(cz - rr)), int(np.floor(cz + rr))
        y0, y1 = int(np.floor(cy - rr)), int(np.floor(cy + rr))
        x0, x1 = int(np.floor(cx - rr)), int(np.floor(cx + rr))
        for z in range(max(z0, 0), min(z1, nz - 1) + 1):
            for y in range(max(y0, 0), min(y1, ny - 1) + 1):
                for x in range(max(x0, 0), min(x1, nx - 1) + 1):
                    dz = z + 0.5 - cz
                    dy = y + 0.5 - cy
                    dx = x + 0.5 - cx
                    if dz * dz + dy * dy + dx * dx > rr * rr + 0.25:
                        continue
                    if occ[z, y, x] == 0:
                        occ[z, y, x] = own + 1
                        filled += 1
    return filled


class Occupancy:
    """Occupancy of skeleton cores over the canvas (world pixels)."""

    def __init__(self, world_shape, cell: float, core_fraction: float):
        self.cell = float(cell)
        self.core_fraction = float(core_fraction)
        self.shape = tuple(int(np.ceil(s / cell)) for s in world_shape)
        self.grid = np.zeros(self.shape, dtype=np.int32)
        self.filled = 0

    @property
    def fill(self) -> float:
        return self.filled / float(self.grid.size)

    def conflicts(self, pts, radii, branch: int, parent: int = -1) -> np.ndarray:
        """Per sample: 1 where its core would enter another branch's core."""
        return _check(
            self.grid,
            self.cell,
            np.ascontiguousarray(pts, dtype=np.float64),
            np.ascontiguousarray(radii, dtype=np.float64),
            self.core_fraction,
            int(branch),
            int(parent),
        )

    def conflict_fraction(self, pts, radii, branch: int, parent: int = -1) -> float:
        if len(pts) == 0:
            return 1.0
        return float(self.conflicts(pts, radii, branch, parent).mean())

    def stamp(self, pts, radii, branch: int) -> None:
        self.filled += _stamp(
            self.grid,
            self.cell,
            np.ascontiguousarray(pts, dtype=np.float64),
            np.ascontiguousarray(radii, dtype=np.float64),
            self.core_fraction,
            int(branch),
        )
