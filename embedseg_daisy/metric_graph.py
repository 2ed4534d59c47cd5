"""Metric-graph affinities from dense voxel embeddings (Lee et al. 2019, Eq. 6).

For an edge ``(p, q)`` with embeddings ``x_p`` and ``x_q``::

    a(p, q) = max((2 delta_d - ||x_p - x_q||_1) / (2 delta_d), 0) ** 2

so ``a = 1`` for equal embeddings and ``a = 0`` at L1 distance ``>= 2 delta_d``
(3 with the paper's ``delta_d = 1.5``).  The norm is L1, as in the loss.

Channel ``k`` at voxel ``p`` is the edge ``(p, p + offsets[k])`` (offsets in voxels,
``(z, y, x)``; see :mod:`embedseg_daisy.offsets`).  An edge whose partner
``p + offsets[k]`` lies outside the array is not an edge: its affinity is 0 and
:func:`valid_edge_mask` flags it ``False``.

Both the torch version (:func:`metric_affinities`, used by inference on CPU and CUDA)
and the numpy twin (:func:`metric_affinities_np`, a reference for tests and tools)
loop over the offsets only; each offset is one vectorised operation on two shifted
views of the embedding array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Offsets = Sequence[Sequence[int]]

#: Paper value of the intra-cluster margin delta_d (affinity 0 at L1 distance 2 * 1.5).
DELTA_D = 1.5


def _check_offsets(offsets: Offsets) -> list[tuple[int, int, int]]:
    out = []
    for off in offsets:
        off = tuple(int(v) for v in off)
        if len(off) != 3:
            raise ValueError(f"offsets must be (z, y, x) triples, got {off}")
        out.append(off)
    if not out:
        raise ValueError("need at least one offset")
    return out  # type: ignore[return-value]


def edge_slices(offset: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Slices ``(source, partner)`` over a ``shape`` (z, y, x) array such that
    ``array[partner]`` holds ``p + offset`` for every ``p`` in ``array[source]``.

    ``source`` covers exactly the voxels whose partner lies inside the array.
    Returns ``None`` when no voxel has its partner inside (|offset| >= shape).
    """
    src, dst = [], []
    for d, n in zip(offset, shape):
        d, n = int(d), int(n)
        if abs(d) >= n:
            return None
        src.append(slice(max(0, -d), n - max(0, d)))
        dst.append(slice(max(0, d), n + min(0, d)))
    return tuple(src), tuple(dst)


def valid_edge_mask(shape: Sequence[int], offsets: Offsets) -> np.ndarray:
    """``(K, z, y, x)`` bool: ``True`` where the partner ``p + offsets[k]`` is inside
    an array of spatial shape ``shape``."""
    offsets = _check_offsets(offsets)
    shape = tuple(int(s) for s in shape)
    mask = np.zeros((len(offsets),) + shape, dtype=bool)
    for k, off in enumerate(offsets):
        sl = edge_slices(off, shape)
        if sl is not None:
            mask[(k,) + sl[0]] = True
    return mask


def affinity_from_distance(dist: torch.Tensor, delta_d: float = DELTA_D) -> torch.Tensor:
    """Eq. 6 applied in place to an L1 distance tensor (returns it)."""
    two_delta = 2.0 * float(delta_d)
    return dist.neg_().add_(two_delta).div_(two_delta).clamp_(min=0.0).square_()


def metric_affinities(
    emb: torch.Tensor,
    offsets: Offsets,
    delta_d: float = DELTA_D,
    *,
    out: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 affinities of every edge ``(p, p + offsets[k])`` inside ``emb``.

    ``emb``: ``(D, Z, Y, X)`` or ``(N, D, Z, Y, X)`` embeddings (floating point, any
    device).  Returns ``(affinities, valid)``:

    * ``affinities``: ``(K, Z, Y, X)`` or ``(N, K, Z, Y, X)``, ``emb``'s dtype and
      device, in [0, 1]; 0 where the partner lies outside ``emb``.
    * ``valid``: ``(K, Z, Y, X)`` bool on ``emb``'s device (same for every sample).

    ``out`` (optional) receives the affinities (the result's shape and dtype);
    ``scratch`` (optional, ``emb``'s shape and dtype, contiguous) is reused for the
    differences instead of allocating one per offset.  The L1 distance is accumulated
    in ``emb``'s dtype: pass float32 (upcast float16 first).
    """
    offsets = _check_offsets(offsets)
    if emb.dim() not in (4, 5):
        raise ValueError(f"emb must be (D, Z, Y, X) or (N, D, Z, Y, X), got shape {tuple(emb.shape)}")
    if not emb.is_floating_point():
        raise TypeError(f"emb must be floating point, got {emb.dtype}")
    spatial = tuple(emb.shape[-3:])
    lead = tuple(emb.shape[:-4])  # () or (N,)
    shape = lead + (len(offsets),) + spatial
    if out is None:
        out = torch.zeros(shape, dtype=emb.dtype, device=emb.device)
    else:
        if tuple(out.shape) != shape or out.dtype != emb.dtype:
            raise ValueError(f"out must be {shape} {emb.dtype}, got {tuple(out.shape)} {out.dtype}")
        out.zero_()
    if scratch is not None and (scratch.shape != emb.shape or scratch.dtype != emb.dtype or not scratch.is_contiguous()):
        raise ValueError(f"scratch must be a contiguous {tuple(emb.shape)} {emb.dtype} tensor")
    valid = torch.zeros((len(offsets),) + spatial, dtype=torch.bool, device=emb.device)
    ell = (slice(None),) * len(lead)
    for k, off in enumerate(offsets):
        sl = edge_slices(off, spatial)
        if sl is None:
            continue
        src, dst = sl
        a = emb[ell + (slice(None),) + src]
        b = emb[ell + (slice(None),) + dst]
        if scratch is None:
            diff = torch.sub(a, b)
        else:
            diff = scratch[ell + (slice(None),) + tuple(slice(0, s.stop - s.start) for s in src)]
            torch.sub(a, b, out=diff)
        view = out[ell + (k,) + src]
        # |a - b| summed over the embedding dimension (axis -4) straight into the output,
        # then Eq. 6 in place
        torch.sum(diff.abs_(), dim=-4, out=view)
        affinity_from_distance(view, delta_d)
        valid[(k,) + src] = True
    return out, valid


def metric_affinities_np(
    emb: np.ndarray, offsets: Offsets, delta_d: float = DELTA_D
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of :func:`metric_affinities` for ``(D, Z, Y, X)`` embeddings.

    Returns ``(affinities (K, Z, Y, X), valid (K, Z, Y, X) bool)``; affinities in the
    embedding's floating dtype (float32 for integer input is not accepted: pass floats).
    """
    offsets = _check_offsets(offsets)
    emb = np.asarray(emb)
    if emb.ndim != 4:
        raise ValueError(f"emb must be (D, Z, Y, X), got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating):
        raise TypeError(f"emb must be floating point, got {emb.dtype}")
    spatial = emb.shape[1:]
    affs = np.zeros((len(offsets),) + spatial, dtype=emb.dtype)
    valid = valid_edge_mask(spatial, offsets)
    two_delta = emb.dtype.type(2.0 * float(delta_d))
    for k, off in enumerate(offsets):
        sl = edge_slices(off, spatial)
        if sl is None:
            continue
        src, dst = sl
        dist = np.abs(emb[(slice(None),) + src] - emb[(slice(None),) + dst]).sum(axis=0)
        affs[(k,) + src] = np.square(np.maximum((two_delta - dist) / two_delta, 0))
    return affs, valid
