"""Baseline affinity-net loss: BCE on nearest-neighbour and long-range affinities.

Channel ``k`` at voxel ``p`` is the edge ``(p, p + offsets[k])`` (design.md).  Its target
is 1 iff both endpoints carry the same nonzero id (ids after the Fig. S4 background
kernel), else 0.  Edges whose partner ``p + offsets[k]`` lies outside the loss region
are masked out.  The first ``n_nearest`` channels are the primary target; the rest
(long-range) are auxiliary:
``total = BCE_nearest + long_range_weight * BCE_long_range`` where each BCE is the mean
over the valid edges of its channel group.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from embedseg_daisy.training.loss import _crop_to


class AffinityLossTerms(NamedTuple):
    total: torch.Tensor
    nearest: torch.Tensor
    long_range: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self._asdict().items()}


def affinity_targets(
    labels: torch.Tensor, offsets: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and validity of every edge.

    ``labels``: ``(N, Z, Y, X)`` integer ids (0 = background).  Returns
    ``(targets float32, valid bool)``, both ``(N, K, Z, Y, X)``.
    """
    if labels.ndim != 4:
        raise ValueError(f"labels must be (N, Z, Y, X), got {tuple(labels.shape)}")
    n, *shape = labels.shape
    k = len(offsets)
    targets = torch.zeros((n, k, *shape), dtype=torch.float32, device=labels.device)
    valid = torch.zeros((n, k, *shape), dtype=torch.bool, device=labels.device)
    for c, off in enumerate(offsets):
        src, dst = [], []
        for o, s in zip(off, shape):
            o = int(o)
            if abs(o) >= s:
                src = None
                break
            # p ranges over voxels whose partner p + o is inside.
            src.append(slice(max(0, -o), s - max(0, o)))
            dst.append(slice(max(0, o), s - max(0, -o)))
        if src is None:
            continue
        a = labels[(slice(None), *src)]
        b = labels[(slice(None), *dst)]
        targets[(slice(None), c, *src)] = ((a == b) & (a != 0)).float()
        valid[(slice(None), c, *src)] = True
    return targets, valid


def _masked_bce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if not bool(valid.any()):
        return logits.sum() * 0.0
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per * valid).sum() / valid.sum()


def affinity_loss(
    output,
    labels: torch.Tensor,
    offsets: Sequence[Sequence[int]],
    *,
    n_nearest: int = 3,
    long_range_weight: float = 1.0,
) -> AffinityLossTerms:
    """BCE loss of an affinity net.

    ``output``: ``AffinityOutput`` or logits ``(N, K, Z, Y, X)``, input-sized or cropped
    (centre-cropped to ``labels``).  ``labels``: ``(N, Z, Y, X)`` ids of the loss region.
    """
    logits = output[0] if isinstance(output, tuple) else output
    if logits.shape[1] != len(offsets):
        raise ValueError(f"{logits.shape[1]} affinity channels but {len(offsets)} offsets")
    labels = torch.as_tensor(labels).to(logits.device)
    logits = _crop_to(logits, tuple(labels.shape)).float()
    targets, valid = affinity_targets(labels, offsets)
    near = _masked_bce(logits[:, :n_nearest], targets[:, :n_nearest], valid[:, :n_nearest])
    if logits.shape[1] > n_nearest:
        far = _masked_bce(logits[:, n_nearest:], targets[:, n_nearest:], valid[:, n_nearest:])
    else:
        far = near * 0.0
    return AffinityLossTerms(near + long_range_weight * far, near, far)
