"""A smooth field of preferred neurite directions and streamlines through it.

Real neuropil is locally ordered: neighbouring axons often run nearly parallel
(fascicles, parallel fibres), and such neighbours pack far more densely than
randomly crossing tubes.  The field is a weighted mix of a few *domains*, each
with a centre, a size and an axial direction (d and -d are the same); a
streamline follows the field with some individual wander.
"""

from __future__ import annotations

import numba
import numpy as np

from .curves import random_direction, smooth_noise


class FlowField:
    def __init__(self, rng: np.random.Generator, world_hi, n_domains: int, classes, scale=(120.0, 260.0)):
        n = max(int(n_domains), 1)
        self.centres = rng.random((n, 3)) * np.asarray(world_hi, dtype=float)[None]
        self.dirs = np.stack([random_direction(rng, classes) for _ in range(n)])
        s = rng.uniform(*scale, size=n)
        self.inv2s2 = 1.0 / (2.0 * s * s)

    def direction_at(self, x, heading) -> np.ndarray:
        v = _field(np.asarray(x, float), np.asarray(heading, float), self.centres, self.dirs, self.inv2s2)
        return v

    def streamline(self, rng, anchor, heading, length_each_way, *, follow, wander, corr, step=1.0):
        """Dense polyline (n, 3) through ``anchor``; returns (points, anchor_index)."""
        n = int(length_each_way / step)
        noise_f = smooth_noise(rng, n, 3, corr / step)
        noise_b = smooth_noise(rng, n, 3, corr / step)
        a = np.asarray(anchor, float)
        h = np.asarray(heading, float)
        fwd = _trace(a, h, self.centres, self.dirs, self.inv2s2, noise_f, follow, wander, step)
        bwd = _trace(a, -h, self.centres, self.dirs, self.inv2s2, noise_b, follow, wander, step)
        pts = np.concatenate([bwd[::-1], a[None], fwd])
        return pts, n


@numba.njit(cache=True)
def _field(x, h, centres, dirs, inv2s2):
    v = np.zeros(3)
    for k in range(centres.shape[0]):
        d2 = 0.0
        for j in range(3):
            d2 += (x[j] - centres[k, j]) ** 2
        w = np.exp(-d2 * inv2s2[k])
        dot = dirs[k, 0] * h[0] + dirs[k, 1] * h[1] + dirs[k, 2] * h[2]
        sgn = 1.0 if dot >= 0 else -1.0
        for j in range(3):
            v[j] += w * sgn * dirs[k, j]
    nrm = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
    if nrm < 1e-6:
        return h.copy()
    return v / nrm


@numba.njit(cache=True)
def _trace(anchor, heading, centres, dirs, inv2s2, noise, follow, wander, step):
    n = noise.shape[0]
    out = np.empty((n, 3))
    x = anchor.copy()
    h = heading / np.sqrt((heading**2).sum())
    for i in range(n):
        f = _field(x, h, centres, dirs, inv2s2)
        # relax towards the field, plus the fibre's own smooth wander
        g = (1.0 - follow) * h + follow * f
        for j in range(3):
            g[j] += wander * noise[i, j] * 0.05
        g /= np.sqrt((g**2).sum())
        h = g
        for j in range(3):
            x[j] += step * h[j]
            out[i, j] = x[j]
    return out
