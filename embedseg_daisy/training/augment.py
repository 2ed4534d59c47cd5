"""Training-data augmentation for serial-section EM (Lee et al. 2017; 2019 Sec. 3).

Every function takes a :class:`Patch` and a ``numpy.random.Generator`` and returns a
new ``Patch`` with the same shapes and dtypes (inputs are never modified).  Random
choices come only from ``rng``; explicit keyword arguments (``z=``, ``shift=`` ...)
fix them for tests.

================================  ===========  ===========================================
augmentation                      input        target (labels, myelin)
================================  ===========  ===========================================
:func:`flip_transpose`            yes          yes (in-plane flips, y/x transpose)
:func:`intensity`                 yes          no  (brightness, contrast, gamma)
:func:`missing_section`           zeroed       no
:func:`out_of_focus`              blurred      no  (whole section or a half-plane)
:func:`misalignment`              shifted      shifted (sections z0.. translated)
:func:`slip_interpolation`        shifted      no  (one section, input only, Sec. 3)
================================  ===========  ===========================================

Shifted sections are filled at the exposed border by edge replication.  The training
sampler therefore reads a patch padded by :meth:`AugmentConfig.margin` voxels in y and
x, augments it, and crops the centre, so the fill never reaches the network input as
long as shifts stay within the margin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.ndimage as ndi
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Patch:
    """One training example: ``raw`` float32 in [0, 1], ``labels`` ids, optional myelin."""

    raw: np.ndarray  # (Z, Y, X) float
    labels: np.ndarray  # (Z, Y, X) integer ids, 0 = background
    myelin: np.ndarray | None = None  # (Z, Y, X) bool

    def __post_init__(self) -> None:
        if self.raw.ndim != 3 or self.raw.shape != self.labels.shape:
            raise ValueError(f"raw {self.raw.shape} and labels {self.labels.shape} must be equal (Z, Y, X)")
        if self.myelin is not None and self.myelin.shape != self.raw.shape:
            raise ValueError(f"myelin {self.myelin.shape} does not match raw {self.raw.shape}")


def _map_targets(patch: Patch, fn) -> dict:
    out = {"labels": fn(patch.labels)}
    if patch.myelin is not None:
        out["myelin"] = fn(patch.myelin)
    return out


# ----------------------------------------------------------------------- geometry


def flip_transpose(
    patch: Patch,
    rng: np.random.Generator,
    *,
    flip_y: bool | None = None,
    flip_x: bool | None = None,
    transpose: bool | None = None,
) -> Patch:
    """Random in-plane flips and y/x transpose (transpose only when Y == X)."""
    fy = bool(rng.integers(2)) if flip_y is None else flip_y
    fx = bool(rng.integers(2)) if flip_x is None else flip_x
    tr = bool(rng.integers(2)) if transpose is None else transpose
    if tr and patch.raw.shape[1] != patch.raw.shape[2]:
        tr = False

    def f(a: np.ndarray) -> np.ndarray:
        if fy:
            a = a[:, ::-1, :]
        if fx:
            a = a[:, :, ::-1]
        if tr:
            a = a.transpose(0, 2, 1)
        return np.ascontiguousarray(a)

    return replace(patch, raw=f(patch.raw), **_map_targets(patch, f))


def _shift_yx(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[y, x] = a[y - dy, x - dx]`` on (..., Y, X), edge-replicated at the border."""
    if dy == 0 and dx == 0:
        return a.copy()
    py, px = abs(dy), abs(dx)
    pad = [(0, 0)] * (a.ndim - 2) + [(py, py), (px, px)]
    big = np.pad(a, pad, mode="edge")
    y0, x0 = py - dy, px - dx
    return big[..., y0 : y0 + a.shape[-2], x0 : x0 + a.shape[-1]].copy()


def _random_shift(rng: np.random.Generator, max_shift: int) -> tuple[int, int]:
    if max_shift < 1:
        return (0, 0)
    while True:
        dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
        if dy or dx:
            return dy, dx


def misalignment(
    patch: Patch,
    rng: np.random.Generator,
    *,
    max_shift: int = 8,
    z: int | None = None,
    shift: tuple[int, int] | None = None,
) -> Patch:
    """Translation misalignment: sections ``z..`` shifted by ``shift`` in input AND target."""
    nz = patch.raw.shape[0]
    if nz < 2:
        return patch
    z0 = int(rng.integers(1, nz)) if z is None else int(z)
    dy, dx = _random_shift(rng, max_shift) if shift is None else shift

    def f(a: np.ndarray) -> np.ndarray:
        out = a.copy()
        out[z0:] = _shift_yx(a[z0:], dy, dx)
        return out

    return replace(patch, raw=f(patch.raw), **_map_targets(patch, f))


def slip_interpolation(
    patch: Patch,
    rng: np.random.Generator,
    *,
    max_shift: int = 8,
    z: int | None = None,
    shift: tuple[int, int] | None = None,
) -> Patch:
    """Slip misalignment of one section, in the input only (the target stays aligned)."""
    nz = patch.raw.shape[0]
    zz = int(rng.integers(nz)) if z is None else int(z)
    dy, dx = _random_shift(rng, max_shift) if shift is None else shift
    raw = patch.raw.copy()
    raw[zz] = _shift_yx(patch.raw[zz], dy, dx)
    return replace(patch, raw=raw)


# ---------------------------------------------------------------------- intensity


def intensity(
    patch: Patch,
    rng: np.random.Generator,
    *,
    brightness: float = 0.1,
    contrast: float = 0.1,
    gamma: float = 0.5,
    per_section: bool = True,
) -> Patch:
    """``raw <- clip(raw * (1 + c) + b, 0, 1) ** 2**g`` with ``c ~ U(+-contrast)``,
    ``b ~ U(+-brightness)``, ``g ~ U(+-gamma)``; drawn per section or per patch."""
    raw = patch.raw
    n = raw.shape[0] if per_section else 1
    c = rng.uniform(-contrast, contrast, n).astype(raw.dtype)[:, None, None]
    b = rng.uniform(-brightness, brightness, n).astype(raw.dtype)[:, None, None]
    g = (2.0 ** rng.uniform(-gamma, gamma, n)).astype(raw.dtype)[:, None, None]
    out = np.clip(raw * (1 + c) + b, 0, 1) ** g
    return replace(patch, raw=out.astype(raw.dtype, copy=False))


def missing_section(
    patch: Patch, rng: np.random.Generator, *, z: int | list[int] | None = None, max_sections: int = 1
) -> Patch:
    """Missing sections: input zeroed, target untouched."""
    zs = _pick_sections(rng, patch.raw.shape[0], z, max_sections)
    raw = patch.raw.copy()
    raw[zs] = 0
    return replace(patch, raw=raw)


def out_of_focus(
    patch: Patch,
    rng: np.random.Generator,
    *,
    z: int | list[int] | None = None,
    max_sections: int = 1,
    sigma: tuple[float, float] = (1.0, 4.0),
    partial: bool | None = None,
    partial_prob: float = 0.5,
) -> Patch:
    """Out-of-focus sections: Gaussian blur (sigma ~ U(sigma)) of a whole section or,
    when ``partial``, of one side of a random line through the section."""
    zs = _pick_sections(rng, patch.raw.shape[0], z, max_sections)
    raw = patch.raw.copy()
    _, ny, nx = raw.shape
    for zz in zs:  # a handful of sections, not voxels
        s = float(rng.uniform(*sigma))
        blurred = ndi.gaussian_filter(raw[zz], s, mode="reflect")
        part = (rng.random() < partial_prob) if partial is None else partial
        if part:
            y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
            theta = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:ny, 0:nx]
            side = (yy - y0) * np.cos(theta) + (xx - x0) * np.sin(theta) > 0
            raw[zz] = np.where(side, blurred, raw[zz])
        else:
            raw[zz] = blurred
    return replace(patch, raw=raw)


def _pick_sections(rng, nz: int, z, max_sections: int) -> list[int]:
    if z is not None:
        return [int(v) for v in np.atleast_1d(z)]
    k = int(rng.integers(1, max(1, min(max_sections, nz)) + 1))
    return sorted(int(v) for v in rng.choice(nz, size=k, replace=False))


# ------------------------------------------------------------------------ pipeline


class AugmentConfig(BaseModel):
    """Which augmentations run and how strongly (probabilities are per patch)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    flip_transpose: bool = True
    intensity_prob: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.1, ge=0)
    contrast: float = Field(0.1, ge=0)
    gamma: float = Field(0.5, ge=0)
    missing_prob: float = Field(0.1, ge=0, le=1)
    missing_max_sections: int = Field(2, ge=1)
    blur_prob: float = Field(0.1, ge=0, le=1)
    blur_max_sections: int = Field(2, ge=1)
    blur_sigma: tuple[float, float] = (1.0, 4.0)
    blur_partial_prob: float = Field(0.5, ge=0, le=1)
    misalign_prob: float = Field(0.1, ge=0, le=1)
    misalign_max_shift: int = Field(8, ge=0)
    slip_prob: float = Field(0.1, ge=0, le=1)
    slip_max_shift: int = Field(8, ge=0)

    def margin(self) -> int:
        """In-plane padding (voxels) the sampler must read around the input patch."""
        if not self.enabled:
            return 0
        m = 0
        if self.misalign_prob > 0:
            m = max(m, self.misalign_max_shift)
        if self.slip_prob > 0:
            m = max(m, self.slip_max_shift)
        return m


def augment(patch: Patch, rng: np.random.Generator, cfg: AugmentConfig | None = None) -> Patch:
    """Apply the configured augmentations in a fixed order.

    Order: flips/transpose, misalignment, slip, intensity, out-of-focus, missing
    (so a missing section stays exactly zero).  Deterministic given ``rng``.
    """
    cfg = cfg or AugmentConfig()
    if not cfg.enabled:
        return patch
    if cfg.flip_transpose:
        patch = flip_transpose(patch, rng)
    if rng.random() < cfg.misalign_prob:
        patch = misalignment(patch, rng, max_shift=cfg.misalign_max_shift)
    if rng.random() < cfg.slip_prob:
        patch = slip_interpolation(patch, rng, max_shift=cfg.slip_max_shift)
    if rng.random() < cfg.intensity_prob:
        patch = intensity(patch, rng, brightness=cfg.brightness, contrast=cfg.contrast, gamma=cfg.gamma)
    if rng.random() < cfg.blur_prob:
        patch = out_of_focus(
            patch, rng, max_sections=cfg.blur_max_sections, sigma=cfg.blur_sigma,
            partial_prob=cfg.blur_partial_prob,
        )
    if rng.random() < cfg.missing_prob:
        patch = missing_section(patch, rng, max_sections=cfg.missing_max_sections)
    return patch
