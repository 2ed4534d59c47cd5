"""A PNG montage a person can look at: sections of raw next to coloured labels,
plus an xz reslice (z stretched to the true aspect ratio)."""

from __future__ import annotations

import numpy as np


def label_colors(labels: np.ndarray) -> np.ndarray:
    """RGB uint8 image; 0 is black, every id a stable pseudo-random colour."""
    ids = labels.astype(np.uint64)
    h = ids * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(0xFF) for s in (0, 16, 40)], axis=-1).astype(np.float32)
    rgb = 60 + rgb * (195.0 / 255.0)
    rgb[labels == 0] = 0
    return rgb.astype(np.uint8)


def _reslice(vol: np.ndarray, y: int, stretch: float) -> np.ndarray:
    xz = vol[:, y, :]
    rep = np.clip(np.rint(np.arange(int(round(xz.shape[0] * stretch))) / stretch).astype(int), 0, xz.shape[0] - 1)
    return xz[rep]


def write_preview(
    path, raw: np.ndarray, labels: np.ndarray, *, sections=None, voxel_size=(29, 12, 12), title=None, crop=None
) -> None:
    """Write the montage to ``path``.  ``sections``: z indices (default: four
    spread over the volume); ``crop``: optional (y0, y1, x0, x1) in-plane window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Z, Y, X = raw.shape
    if sections is None:
        sections = sorted(set(int(z) for z in np.linspace(0, Z - 1, 6)[1:-1].round()))
    y0, y1, x0, x1 = crop if crop is not None else (0, Y, 0, X)
    stretch = float(voxel_size[0]) / float(voxel_size[2])
    n = len(sections)
    ratio = (y1 - y0) / max(x1 - x0, 1)
    xz_ratio = min(Z * stretch / max(x1 - x0, 1), 1.5)
    fig_w = 2 * 4.5
    fig_h = (n * ratio + xz_ratio) * 4.5 + 0.4 * (n + 1)
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
    heights = [ratio] * n + [xz_ratio]
    gs = fig.add_gridspec(n + 1, 2, height_ratios=heights, hspace=0.08, wspace=0.03)
    for i, z in enumerate(sections):
        ax = fig.add_subplot(gs[i, 0])
        ax.imshow(raw[z, y0:y1, x0:x1], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_axis_off()
        head = f"{title}\n" if (title and i == 0) else ""
        ax.set_title(f"{head}raw z={z}", fontsize=8, pad=2)
        ax = fig.add_subplot(gs[i, 1])
        ax.imshow(label_colors(labels[z, y0:y1, x0:x1]), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"labels z={z}", fontsize=8, pad=2)
    yc = (y0 + y1) // 2
    ax = fig.add_subplot(gs[n, 0])
    xz = _reslice(raw, yc, stretch)[:, x0:x1]
    ax.imshow(xz, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    ax.set_title(f"raw xz reslice y={yc} (z stretched x{stretch:.2f})", fontsize=8, pad=2)
    ax = fig.add_subplot(gs[n, 1])
    ax.imshow(label_colors(_reslice(labels, yc, stretch))[:, x0:x1], interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    ax.set_title("labels xz reslice", fontsize=8, pad=2)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
