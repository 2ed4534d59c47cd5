"""Reference Mutex Watershed: ``mwatershed.agglom`` with the paper's semantics.

mwatershed 0.5.4 reads the *sign* of a value as the edge type (> 0 attractive,
<= 0 mutex) and its magnitude as the priority; all channels are sorted together.
The paper's semantics are therefore passed as: attractive channels ``+a``, repulsive
channels ``-(1 - a)``, edges with a background endpoint ``0`` (a mutex of priority 0,
processed last: it can no longer change the partition, i.e. the edge is removed).
mwatershed labels voxels that never touch a positive edge 0; here foreground voxels
with label 0 get singleton labels, and background voxels get 0.
"""

from __future__ import annotations

import numpy as np


def signed_weights(affs, offsets, attractive, foreground=None) -> np.ndarray:
    """float64 C-contiguous (K, Z, Y, X) weights in mwatershed's sign convention."""
    affs = np.asarray(affs)
    a = affs.astype(np.float64) / 255.0 if affs.dtype == np.uint8 else affs.astype(np.float64)
    att = np.asarray(attractive, dtype=bool).reshape(-1)
    w = np.where(att[:, None, None, None], a, -(1.0 - a))
    if foreground is not None:
        fg = np.asarray(foreground, dtype=bool)
        shape = fg.shape
        for k, off in enumerate(np.asarray(offsets, dtype=np.int64).reshape(-1, 3)):
            # partner fg, with out-of-array partners counted as foreground (mwatershed skips them)
            partner = np.ones(shape, dtype=bool)
            src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
            dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
            partner[src] = fg[dst]
            w[k][~(fg & partner)] = 0.0
    return np.ascontiguousarray(w, dtype=np.float64)


def mwatershed_reference(affs, offsets, attractive, foreground=None) -> np.ndarray:
    """Mutex Watershed by mwatershed with the paper's semantics; uint64 labels.

    ``affs``: (K, Z, Y, X) uint8 (a = value / 255) or float affinities in [0, 1].
    Background voxels get 0; every other voxel a non-zero label (singletons included).
    """
    import mwatershed

    w = signed_weights(affs, offsets, attractive, foreground)
    offs = [[int(o) for o in off] for off in np.asarray(offsets).reshape(-1, 3)]
    labels = np.asarray(mwatershed.agglom(w, offs)).astype(np.uint64)
    fg = np.ones(labels.shape, bool) if foreground is None else np.asarray(foreground, bool)
    labels[~fg] = 0
    lonely = fg & (labels == 0)
    if lonely.any():
        start = int(labels.max()) + 1
        labels[lonely] = np.arange(start, start + int(lonely.sum()), dtype=np.uint64)
    return labels
