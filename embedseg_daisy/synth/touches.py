"""Self-touch verification: does an object really touch itself near a point?

An object touches itself at ``c`` when, inside a small window around ``c``, its
voxels fall into at least two 6-connected pieces and two of those pieces face
each other across nothing but label-0 voxels, at most ``max_gap`` of them, along
one axis.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import label as nd_label


def window_slices(center, half, shape):
    return tuple(slice(max(int(c) - h, 0), min(int(c) + h + 1, s)) for c, h, s in zip(center, half, shape))


def find_self_contact(labels: np.ndarray, obj_id: int, center, half=(2, 12, 12), max_gap: int = 2):
    """Voxel (z, y, x) on the membrane of a self-contact of ``obj_id`` near
    ``center``, closest to ``center``; ``None`` if the object does not touch
    itself in that window."""
    sl = window_slices(center, half, labels.shape)
    win = labels[sl]
    mask = win == obj_id
    if mask.sum() < 2:
        return None
    comp, n = nd_label(mask)  # default structure: 6-connectivity
    if n < 2:
        return None
    zero = win == 0
    origin = np.array([s.start for s in sl])
    c_local = np.asarray(center) - origin
    best, best_d = None, np.inf
    for axis in range(3):
        L = win.shape[axis]
        for k in range(2, max_gap + 2):
            if k >= L:
                break
            a = np.take(comp, np.arange(0, L - k), axis=axis)
            b = np.take(comp, np.arange(k, L), axis=axis)
            ok = (a > 0) & (b > 0) & (a != b)
            for j in range(1, k):
                ok &= np.take(zero, np.arange(j, L - k + j), axis=axis)
            if not ok.any():
                continue
            pos = np.argwhere(ok)
            pos[:, axis] += k // 2
            d = np.linalg.norm((pos - c_local) * np.array([2.4, 1.0, 1.0]), axis=1)
            i = int(np.argmin(d))
            if d[i] < best_d:
                best_d, best = d[i], pos[i] + origin
    return None if best is None else [int(v) for v in best]
