"""Synthetic affinities for MWS tests and benchmarks (label-derived + noise, or random)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def voronoi_labels(shape, n_objects, rng, anisotropy=(4.0, 1.0, 1.0), boundary=True) -> np.ndarray:
    """Random Voronoi partition (uint64 labels 1..n); with ``boundary`` the voxels whose
    +z, +y or +x neighbour has another label are set to 0 (one-voxel boundaries)."""
    shape = tuple(int(s) for s in shape)
    seeds = np.zeros(shape, dtype=np.int64)
    n_objects = int(min(n_objects, np.prod(shape)))
    flat = rng.choice(int(np.prod(shape)), size=n_objects, replace=False)
    seeds.ravel()[flat] = np.arange(1, n_objects + 1)
    _, idx = ndimage.distance_transform_edt(seeds == 0, sampling=anisotropy, return_indices=True)
    labels = seeds[tuple(idx)].astype(np.uint64)
    if boundary:
        edge = np.zeros(shape, dtype=bool)
        for ax in range(3):
            sl_a = [slice(None)] * 3
            sl_b = [slice(None)] * 3
            sl_a[ax] = slice(0, -1)
            sl_b[ax] = slice(1, None)
            edge[tuple(sl_a)] |= labels[tuple(sl_a)] != labels[tuple(sl_b)]
        labels[edge] = 0
    return labels


def label_affinities(labels, offsets, rng, noise=0.15, flip=0.0) -> np.ndarray:
    """uint8 (K, Z, Y, X) affinities from labels: ~1 within an object, ~0 across objects or
    at background, plus Gaussian noise of std ``noise``; a fraction ``flip`` of the
    edges gets a uniformly random affinity.  Partners outside the array get 0."""
    labels = np.asarray(labels)
    shape = labels.shape
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 3)
    out = np.zeros((len(offsets),) + shape, dtype=np.uint8)
    for k, off in enumerate(offsets):
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        a = labels[src]
        b = labels[dst]
        same = (a == b) & (a != 0)
        n = np.abs(rng.normal(0.0, noise, size=same.shape)).astype(np.float32)
        val = np.where(same, 1.0 - n, n)
        if flip > 0:
            m = rng.random(same.shape) < flip
            val[m] = rng.random(int(m.sum()))
        out[k][src] = np.rint(np.clip(val, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def random_affinities(shape, num_channels, rng, dtype=np.uint8) -> np.ndarray:
    """Uniformly random affinities: uint8 levels or float64 in (0, 1)."""
    shape = (int(num_channels),) + tuple(int(s) for s in shape)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(shape)


def embedding_affinities(
    labels, offsets, rng, dim=6, sigma=0.1, smooth=2.0, delta=1.5, object_vectors: np.ndarray | None = None
) -> np.ndarray:
    """uint8 metric-graph affinities (Eq. 6 of the paper) from synthetic embeddings.

    Every object gets a random vector in [-3, 3]^dim; every voxel adds smooth Gaussian
    noise (std about ``sigma``, correlation ``smooth`` voxels); the affinity of an edge
    is ``max((2 delta - |e_p - e_q|_1) / (2 delta), 0) ** 2``.  Partners outside the
    array get 0.  ``object_vectors`` (``(labels.max() + 1, dim)``) replaces the random
    vectors, so pieces of one volume made separately agree on every object's vector.
    """
    labels = np.asarray(labels)
    shape = labels.shape
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 3)
    n = int(labels.max()) + 1
    if object_vectors is None:
        object_vectors = rng.uniform(-3.0, 3.0, size=(n, dim))
    emb = np.asarray(object_vectors, np.float32)[labels.astype(np.int64)]
    gain = 1.0 / max(np.sqrt(1.0 / (8 * np.pi**1.5 * smooth**3)), 1e-6) if smooth > 0 else 1.0
    for d in range(dim):
        noise = rng.normal(0.0, sigma, size=shape).astype(np.float32)
        if smooth > 0:
            noise = ndimage.gaussian_filter(noise, smooth) * np.float32(gain)
        emb[..., d] += noise
    out = np.zeros((len(offsets),) + shape, dtype=np.uint8)
    for k, off in enumerate(offsets):
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        dist = np.abs(emb[src] - emb[dst]).sum(axis=-1)
        a = np.maximum((2 * delta - dist) / (2 * delta), 0.0) ** 2
        out[k][src] = np.rint(a * 255.0).astype(np.uint8)
    return out
