"""EM appearance: turn part maps into serial-section TEM-like images.

Light cytoplasm with fine grain, dark membranes exactly on the label-0
boundaries, mitochondria (dark, outlined, with cristae texture), synaptic
vesicle rings in boutons, microtubule / glycogen dots, then in-plane blur,
per-section brightness and contrast changes, a slow illumination gradient and
noise.  Works on chunks of sections to bound memory.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter

from .neurites import KIND_AXON, KIND_DENDRITE, KIND_GLIA


@numba.njit(cache=True, nogil=True)
def _stamp(img, zs, ys, xs, kernel, amp):
    Z, Y, X = img.shape
    k = kernel.shape[0] // 2
    for i in range(zs.shape[0]):
        z, y, x = zs[i], ys[i], xs[i]
        for dy in range(-k, k + 1):
            yy = y + dy
            if yy < 0 or yy >= Y:
                continue
            for dx in range(-k, k + 1):
                xx = x + dx
                if xx < 0 or xx >= X:
                    continue
                img[z, yy, xx] += amp * kernel[dy + k, dx + k]


def _ring_kernel(radius=1.6, width=0.55, size=5):
    c = size // 2
    yy, xx = np.mgrid[-c : c + 1, -c : c + 1]
    d = np.hypot(yy, xx)
    k = np.exp(-((d - radius) ** 2) / (2 * width**2))
    return (k / k.max()).astype(np.float32)


def _dot_kernel(sigma=0.7, size=3):
    c = size // 2
    yy, xx = np.mgrid[-c : c + 1, -c : c + 1]
    k = np.exp(-(yy**2 + xx**2) / (2 * sigma**2))
    return (k / k.max()).astype(np.float32)


def object_appearance(rng: np.random.Generator, obj_kind: np.ndarray):
    """Per-object base brightness and dot density (microtubules / glycogen)."""
    n = len(obj_kind)
    base = np.full(n, 0.78, dtype=np.float32)
    dots = np.zeros(n, dtype=np.float32)
    k = np.asarray(obj_kind)
    r = rng.random((3, n)).astype(np.float32)
    is_d, is_a, is_g = k == KIND_DENDRITE, k == KIND_AXON, k == KIND_GLIA
    base[is_d] = 0.80 + 0.05 * (r[0, is_d] - 0.5)
    base[is_a] = 0.76 + 0.08 * (r[0, is_a] - 0.5)
    base[is_g] = 0.84 + 0.05 * (r[0, is_g] - 0.5)
    dots[is_d] = 0.004 + 0.004 * r[1, is_d]
    dots[is_a] = 0.002 + 0.004 * r[1, is_a]
    dots[is_g] = 0.003 + 0.006 * r[1, is_g]
    return base, dots


def render(
    rng: np.random.Generator,
    part: np.ndarray,
    boundary: np.ndarray,
    mito: np.ndarray,
    part_obj: np.ndarray,
    part_ves: np.ndarray,
    obj_kind: np.ndarray,
    *,
    psd: np.ndarray | None = None,
    oblique_ghost: float = 0.3,
    chunk: int = 8,
) -> np.ndarray:
    """Raw uint8 image (same shape as ``part``).

    ``psd``: postsynaptic density voxels (drawn thick and dark).
    ``oblique_ghost``: a section is a projection through 29 nm, so a membrane
    that moves between sections shows as a grey band; the neighbouring
    sections' membranes are drawn with this relative strength.
    """
    Z, Y, X = part.shape
    base, dots = object_appearance(rng, obj_kind)
    ring = _ring_kernel()
    dot = _dot_kernel()
    # per-section imaging conditions
    gain = (1.0 + 0.03 * rng.standard_normal(Z)).astype(np.float32)
    offset = (0.015 * rng.standard_normal(Z)).astype(np.float32)
    membrane_level = (0.30 + 0.03 * rng.standard_normal(Z)).astype(np.float32)
    tilt = rng.standard_normal((Z, 2)).astype(np.float32) * 0.04
    blur = np.clip(0.8 + 0.12 * rng.standard_normal(Z), 0.55, 1.2)
    yy = (np.arange(Y, dtype=np.float32) / max(Y - 1, 1) - 0.5)[:, None]
    xx = (np.arange(X, dtype=np.float32) / max(X - 1, 1) - 0.5)[None, :]
    out = np.empty(part.shape, dtype=np.uint8)
    for z0 in range(0, Z, chunk):
        z1 = min(z0 + chunk, Z)
        p = part[z0:z1]
        obj = part_obj[p]
        img = base[obj]
        # fine cytoplasmic grain
        img += 0.035 * gaussian_filter(rng.standard_normal(p.shape, dtype=np.float32), (0, 1.0, 1.0)) * 2.0
        # microtubules / glycogen granules
        hits = np.nonzero(rng.random(p.shape, dtype=np.float32) < dots[obj])
        _stamp(img, hits[0], hits[1], hits[2], dot, np.float32(-0.16))
        # synaptic vesicles (rings) where the part carries vesicles
        ves = part_ves[p]
        hits = np.nonzero(rng.random(p.shape, dtype=np.float32) < 0.045 * ves)
        _stamp(img, hits[0], hits[1], hits[2], ring, np.float32(-0.17))
        # mitochondria: dark matrix, darker double membrane, cristae texture
        m = mito[z0:z1].astype(bool)
        if m.any():
            inner = binary_erosion(m, structure=np.ones((1, 3, 3), bool))
            cristae = 0.07 * gaussian_filter(rng.standard_normal(p.shape, dtype=np.float32), (0, 0.8, 0.8)) * 3.0
            img = np.where(m, 0.55 * img + cristae, img)
            img = np.where(m & ~inner, 0.30, img)
        # postsynaptic densities: dark thickening on the dendrite side
        if psd is not None:
            d = psd[z0:z1].astype(bool)
            if d.any():
                d = binary_dilation(d, structure=np.ones((1, 3, 3), bool)) & (obj_kind[obj] == KIND_DENDRITE)
                img = np.where(d, 0.55 * img, img)
        # membranes exactly on the label-0 boundaries, plus the faint bands of
        # membranes that move between sections (projection through the slab)
        b = boundary[z0:z1].astype(np.float32)
        if oblique_ghost > 0 and Z > 1:
            lo, hi = max(z0 - 1, 0), min(z1 + 1, Z)
            nb = boundary[lo:hi].astype(np.float32)
            ghost = np.zeros_like(b)
            for k in range(z1 - z0):
                zi = z0 + k - lo
                if zi - 1 >= 0:
                    ghost[k] = np.maximum(ghost[k], nb[zi - 1])
                if zi + 1 < nb.shape[0]:
                    ghost[k] = np.maximum(ghost[k], nb[zi + 1])
            b = np.maximum(b, oblique_ghost * ghost)
        mem = membrane_level[z0:z1, None, None] + 0.05 * rng.standard_normal(p.shape, dtype=np.float32)
        img = ((1.0 - b) * img + b * mem).astype(np.float32)
        for k in range(z1 - z0):
            img[k] = gaussian_filter(img[k], blur[z0 + k])
        # slow illumination gradient, section gain / offset, noise
        shade = tilt[z0:z1, 0, None, None] * yy[None] + tilt[z0:z1, 1, None, None] * xx[None]
        img = img * gain[z0:z1, None, None] + offset[z0:z1, None, None] + shade
        img += 0.05 * rng.standard_normal(p.shape, dtype=np.float32)
        img += 0.03 * gaussian_filter(rng.standard_normal(p.shape, dtype=np.float32), (0, 1.5, 1.5)) * 2.5
        out[z0:z1] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out
