"""Smooth random space curves (skeletons) in world pixels, (z, y, x) order.

Everything here is vectorised over the samples of one curve; callers loop over
objects only.
"""

from __future__ import annotations

import numpy as np

EZ = np.array([1.0, 0.0, 0.0])


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def smooth_noise(rng: np.random.Generator, n: int, dims: int, corr: float) -> np.ndarray:
    """Smooth random noise of shape (n, dims), about unit variance per column.

    Random knots every ``corr / 2`` samples, lightly smoothed and linearly
    interpolated (cheap even for long curves); ``corr`` is the correlation
    length in samples.
    """
    spacing = max(float(corr) / 2.0, 1.0)
    n_knots = int(np.ceil((n - 1) / spacing)) + 4
    knots = rng.standard_normal((n_knots, dims))
    # [1, 2, 1] / 4 smoothing; rescale to unit variance (var factor 6/16)
    knots = (knots[:-2] + 2 * knots[1:-1] + knots[2:]) / np.sqrt(6.0)
    x = np.arange(n) / spacing + rng.random()
    xi = np.arange(len(knots))
    out = np.stack([np.interp(x, xi, knots[:, k]) for k in range(dims)], axis=1)
    return out * np.sqrt(1.5)  # linear interpolation loses about 1/3 of the variance


def random_direction(rng: np.random.Generator, classes) -> np.ndarray:
    """A unit direction whose angle to the z axis follows ``classes``.

    ``classes``: sequence of (probability, min_deg, max_deg).
    """
    probs = np.array([c[0] for c in classes], dtype=float)
    k = rng.choice(len(classes), p=probs / probs.sum())
    lo, hi = np.deg2rad(classes[k][1]), np.deg2rad(classes[k][2])
    # uniform on the sphere restricted to the band of polar angles
    cos_t = rng.uniform(np.cos(hi), np.cos(lo))
    sin_t = np.sqrt(max(0.0, 1.0 - cos_t**2))
    phi = rng.uniform(0.0, 2.0 * np.pi)
    d = np.array([cos_t, sin_t * np.sin(phi), sin_t * np.cos(phi)])
    if rng.random() < 0.5:
        d = -d
    return d


def perpendicular_inplane(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to ``d`` with the largest possible in-plane part."""
    n = np.cross(d, EZ)
    if np.linalg.norm(n) < 0.2:  # d nearly along z: any in-plane direction works
        phi = rng.uniform(0, 2 * np.pi)
        n = np.array([0.0, np.sin(phi), np.cos(phi)])
        n = n - d * np.dot(n, d)
    n = unit(n)
    return n if rng.random() < 0.5 else -n


def wander_path(
    rng: np.random.Generator,
    anchor: np.ndarray,
    d0: np.ndarray,
    length_back: float,
    length_fwd: float,
    *,
    corr_len: float,
    wander: float,
    step: float = 1.0,
) -> np.ndarray:
    """Dense polyline (n, 3) through ``anchor`` with mean direction ``d0``.

    The direction is ``d0 + wander * v(t)`` with ``v`` smooth noise of correlation
    length ``corr_len`` pixels, so the radius of curvature is about
    ``corr_len / wander``.
    """
    nb = max(int(round(length_back / step)), 0)
    nf = max(int(round(length_fwd / step)), 0)
    n = nb + nf + 1
    v = smooth_noise(rng, n, 3, corr_len / step)
    dirs = unit(d0[None, :] + wander * v)
    pos = np.cumsum(dirs * step, axis=0)
    pos -= pos[nb]
    return pos + anchor[None, :]


def arc_length(points: np.ndarray) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def resample_by_radius(
    points: np.ndarray,
    radii: np.ndarray,
    *extra: np.ndarray,
    spacing_factor: float = 0.5,
    min_spacing: float = 0.5,
    max_spacing: float = 3.0,
):
    """Resample a dense polyline so that ball spacing is about ``spacing_factor * r``.

    Returns (points, radii, t, *extra) where ``t`` is the arc length of each new
    sample along the original polyline.
    """
    t = arc_length(points)
    if len(t) < 2 or t[-1] <= 0:
        return (points, radii, t) + tuple(extra)
    spacing = np.clip(spacing_factor * radii, min_spacing, max_spacing)
    # u(t) = integral dt / spacing(t); samples at integer steps of u
    du = np.diff(t) / (0.5 * (spacing[1:] + spacing[:-1]))
    u = np.concatenate([[0.0], np.cumsum(du)])
    n_new = max(int(np.ceil(u[-1])) + 1, 2)
    u_new = np.linspace(0.0, u[-1], n_new)
    t_new = np.interp(u_new, u, t)
    pts = np.stack([np.interp(t_new, t, points[:, k]) for k in range(3)], axis=1)
    r_new = np.interp(t_new, t, radii)
    ex = tuple(np.interp(t_new, t, e) for e in extra)
    return (pts, r_new, t_new) + ex


def inside_run(points: np.ndarray, radii: np.ndarray, lo: np.ndarray, hi: np.ndarray, keep: int):
    """Slice of the contiguous run of samples around index ``keep`` whose balls
    touch the box ``[lo, hi)`` (world pixels)."""
    ok = np.all((points + radii[:, None] >= lo[None, :]) & (points - radii[:, None] < hi[None, :]), axis=1)
    if not ok[keep]:
        return slice(keep, keep)
    bad = np.flatnonzero(~ok)
    before = bad[bad < keep]
    after = bad[bad > keep]
    start = before[-1] + 1 if len(before) else 0
    stop = after[0] if len(after) else len(ok)
    return slice(start, stop)


def bezier(p0, p1, p2, p3, n: int) -> np.ndarray:
    """Cubic Bezier curve sampled at ``n`` parameter values."""
    s = np.linspace(0.0, 1.0, n)[:, None]
    return (
        (1 - s) ** 3 * p0[None]
        + 3 * (1 - s) ** 2 * s * p1[None]
        + 3 * (1 - s) * s**2 * p2[None]
        + s**3 * p3[None]
    )
