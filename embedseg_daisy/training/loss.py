"""Means-based embedding loss (Lee et al. 2019, Eqs. 1-5) and its target preprocessing.

What is implemented, literally after the paper (``||.||`` is the L1 norm):

* ``L_int = 1/C sum_c 1/N_c sum_{i in c} ||mu_c - x_i||_1 ** 2`` -- the *square of
  the L1 norm*, with no hinge (no pull margin).  The paper writes ``||.||^2`` and
  says ``||.||`` is the L1 norm; de Brabandere et al. use a hinged L2 variant, which
  we do not follow.  The means ``mu_c`` are not detached (gradients flow through them).
* ``L_ext = 1/(C (C-1)) sum_{A != B} max(2 delta_d - ||mu_A - mu_B||_1, 0) ** 2`` over
  ordered pairs, ``delta_d = 1.5``.  Pairs of *locally split parts* of one object are
  removed from the sum; the normaliser stays ``C (C-1)`` with ``C`` the number of
  parts ("removing ... the individual external terms", Sec. 2.1).
* ``L_reg = 1/C sum_c ||mu_c||_1``.
* ``L_embedding = alpha L_int + beta L_ext + gamma L_reg`` (1, 1, 0.001).
* ``L_background`` = binary cross-entropy of the mask logit against the background
  target (1 = background), mean over the loss region.  ``L_total = L_embedding +
  background_weight * L_background`` (weight 1 in the paper).

Objects are the *parts*: connected components (6-connectivity) of each ground-truth
object inside the loss region, recomputed per training patch.  Background (id 0) is
excluded from the embedding terms.  With a batch, every term is computed per sample
and the batch loss is the mean over samples (a sample without objects contributes 0
to the embedding terms).  Everything is vectorised over objects and samples (``index_add`` / ``bincount`` /
``cdist``); there is no Python loop over objects or voxels.

Target preprocessing (numpy, per patch, before cropping): :func:`augment_background`
is the 3x3x1 background-augmenting kernel of Fig. S4; :func:`local_parts` the
connected components.  Myelin (optional boolean mask) keeps its object ids for the
embedding terms but is background for the mask loss (Fig. S3).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.ndimage as ndi
import skimage.measure
import torch
import torch.nn.functional as F

DELTA_D = 1.5
ALPHA = 1.0
BETA = 1.0
GAMMA = 0.001


class EmbeddingLossTerms(NamedTuple):
    """Scalar tensors; ``total`` carries the gradient."""

    total: torch.Tensor
    embedding: torch.Tensor
    internal: torch.Tensor
    external: torch.Tensor
    regularisation: torch.Tensor
    background: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self._asdict().items()}


# --------------------------------------------------------------------------- targets


def augment_background(labels: np.ndarray, size: tuple[int, int, int] = (1, 3, 3)) -> np.ndarray:
    """Fig. S4: mark as background (0) every voxel whose window contains > 1 positive id.

    ``labels`` is ``(Z, Y, X)`` (or any shape whose last three axes are z, y, x);
    the window ``size`` is in voxels (z, y, x) -- 3x3 in-plane, one section -- and
    includes the voxel itself.  At the array border the window is clipped.  Returns a
    new array of the same dtype.
    """
    labels = np.asarray(labels)
    full = (1,) * (labels.ndim - len(size)) + tuple(size)
    top = np.iinfo(labels.dtype).max if labels.dtype.kind in "ui" else np.inf
    hi = ndi.maximum_filter(labels, size=full, mode="nearest")
    lo = ndi.minimum_filter(np.where(labels > 0, labels, top).astype(labels.dtype), size=full, mode="nearest")
    conflict = (hi > 0) & (lo < hi)
    out = labels.copy()
    out[conflict] = 0
    return out


def local_parts(labels: np.ndarray) -> np.ndarray:
    """Connected components (6-connectivity) of each object of ``labels`` (z, y, x).

    Voxels are connected when face-adjacent and of the same nonzero id, so one object
    that leaves and re-enters the patch becomes several parts.  Returns int64 part ids
    ``1..P`` (0 = background).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"local_parts expects (Z, Y, X) labels, got shape {labels.shape}")
    return skimage.measure.label(labels, background=0, connectivity=1).astype(np.int64)


def compact_ids(labels: np.ndarray) -> np.ndarray:
    """Relabel ids to ``0..K`` (int64), keeping 0 as background; equality is preserved."""
    labels = np.asarray(labels)
    uniq, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape).astype(np.int64)
    if uniq.size and uniq[0] == 0:
        return inv
    return inv + 1


# --------------------------------------------------------------------------- losses


def _crop_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Centre-crop the last three axes of ``t`` to ``shape`` (no-op when equal)."""
    sl = []
    for s, c in zip(t.shape[-3:], shape[-3:]):
        if c > s or (s - c) % 2:
            raise ValueError(f"cannot centre-crop output {tuple(t.shape[-3:])} to targets {tuple(shape[-3:])}")
        m = (s - c) // 2
        sl.append(slice(m, m + c))
    return t[(..., *sl)]


def discriminative_loss(
    embedding: torch.Tensor,
    parts: torch.Tensor,
    parents: torch.Tensor | None = None,
    *,
    delta_d: float = DELTA_D,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 1-4 on a batch.  Returns ``(L_embedding, L_int, L_ext, L_reg)``.

    ``embedding``: ``(N, D, Z, Y, X)``.  ``parts``: ``(N, Z, Y, X)`` integer ids, 0 =
    ignored (background), ids unique within a sample.  ``parents``: same shape, the
    original object id of each voxel; the external terms between two parts with the
    same parent are dropped.  ``None``: every part is its own object.
    Computed in float32 for half-precision embeddings (float64 stays float64).
    """
    if embedding.ndim != 5 or parts.shape != embedding.shape[:1] + embedding.shape[2:]:
        raise ValueError(
            f"embedding (N, D, Z, Y, X) and parts (N, Z, Y, X) do not match: "
            f"{tuple(embedding.shape)} vs {tuple(parts.shape)}"
        )
    n, d = embedding.shape[:2]
    dev = embedding.device
    if embedding.dtype not in (torch.float32, torch.float64):
        embedding = embedding.float()  # mixed precision: the loss is float32
    x = embedding.permute(0, 2, 3, 4, 1).reshape(-1, d)  # (N*V, D)
    parts = parts.to(dev).long().reshape(n, -1)
    if int(parts.min()) < 0:
        raise ValueError("part ids must be >= 0")
    fg = (parts > 0).reshape(-1)
    zero = embedding.sum() * 0.0  # keeps the graph connected when there is nothing
    if not bool(fg.any()):
        z = zero.float()
        return z, z.detach(), z.detach(), z.detach()

    # Object index of every voxel without sorting: key = sample * stride + part id;
    # present keys are numbered 0..C-1, background goes to the extra slot C.
    stride = int(parts.max()) + 1
    key = (torch.arange(n, device=dev)[:, None] * stride + parts).reshape(-1)
    key_count = torch.bincount(key, minlength=n * stride)
    key_count.view(n, stride)[:, 0] = 0
    uniq = torch.nonzero(key_count, as_tuple=True)[0]
    n_obj = uniq.numel()
    remap = torch.full((n * stride,), n_obj, dtype=torch.long, device=dev)
    remap[uniq] = torch.arange(n_obj, device=dev)
    inv = remap[key]  # (N*V,), n_obj for background
    obj_sample = uniq // stride

    counts = key_count[uniq].to(x.dtype)
    sums = torch.zeros(n_obj + 1, d, device=dev, dtype=x.dtype).index_add_(0, inv, x)
    mu = sums[:n_obj] / counts[:, None]
    n_c = torch.bincount(obj_sample, minlength=n).to(x.dtype)  # objects per sample

    # Eq. 1: squared L1 distance to the object mean, mean per object, mean per sample.
    mu_ext = torch.cat([mu, mu.new_zeros(1, d)], 0)
    d_int = (mu_ext[inv] - x).abs().sum(1).square()
    per_obj = torch.zeros(n_obj + 1, device=dev, dtype=x.dtype).index_add_(0, inv, d_int)[:n_obj] / counts
    l_int = torch.zeros(n, device=dev, dtype=x.dtype).index_add_(0, obj_sample, per_obj) / n_c.clamp(min=1)

    # Eq. 3.
    l_reg = torch.zeros(n, device=dev, dtype=x.dtype).index_add_(0, obj_sample, mu.abs().sum(1)) / n_c.clamp(min=1)

    # Eq. 2 over ordered pairs within a sample, minus pairs of parts of one object.
    if parents is None:
        parent = uniq
    else:
        if parents.shape != embedding.shape[:1] + embedding.shape[2:]:
            raise ValueError(f"parents {tuple(parents.shape)} do not match parts")
        # Every voxel of a part has the same parent, so scatter's last write is fine.
        parent = torch.zeros(n_obj + 1, dtype=torch.long, device=dev).scatter_(
            0, inv, parents.to(dev).long().reshape(-1)
        )[:n_obj]
    dist = torch.cdist(mu[None], mu[None], p=1)[0]
    hinge = torch.clamp(2.0 * delta_d - dist, min=0.0).square()
    valid = (obj_sample[:, None] == obj_sample[None, :]) & (parent[:, None] != parent[None, :])
    ext_rows = torch.where(valid, hinge, torch.zeros_like(hinge)).sum(1)
    l_ext = torch.zeros(n, device=dev, dtype=x.dtype).index_add_(0, obj_sample, ext_rows)
    l_ext = l_ext / (n_c * (n_c - 1)).clamp(min=1)

    total = (alpha * l_int + beta * l_ext + gamma * l_reg).mean() + zero
    return total, l_int.mean(), l_ext.mean(), l_reg.mean()


def background_loss(mask_logit: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Eq. 5's background term: BCE of ``mask_logit`` (N, 1, Z, Y, X) vs target 1 = background."""
    target = background.to(mask_logit.device)
    if target.ndim == mask_logit.ndim - 1:
        target = target[:, None]
    logit = _crop_to(mask_logit, tuple(target.shape))
    if logit.dtype not in (torch.float32, torch.float64):
        logit = logit.float()
    return F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype))


def embedding_loss(
    output,
    labels: torch.Tensor,
    *,
    parts: torch.Tensor | None = None,
    myelin: torch.Tensor | None = None,
    split_parts: bool = True,
    delta_d: float = DELTA_D,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    background_weight: float = 1.0,
) -> EmbeddingLossTerms:
    """Total loss of an embedding net (Eq. 5).

    ``output``: an ``EmbeddingOutput`` (or ``(embedding, mask_logit)``), input-sized or
    already cropped; it is centre-cropped to the targets.  ``labels``: ``(N, Z, Y, X)``
    int64 ground-truth ids of the loss region, *already* through
    :func:`augment_background` (0 = background).  ``parts``: precomputed
    :func:`local_parts` of ``labels`` per sample; computed here (on CPU) when ``None``
    and ``split_parts``.  With ``split_parts=False`` each object is one part, however
    disconnected.  ``myelin``: optional boolean ``(N, Z, Y, X)``; myelin voxels keep
    their ids (foreground for the embedding terms) and are background for the mask.
    """
    embedding, mask_logit = output[0], output[1]
    labels = torch.as_tensor(labels)
    if labels.ndim != 4:
        raise ValueError(f"labels must be (N, Z, Y, X), got {tuple(labels.shape)}")
    embedding = _crop_to(embedding, tuple(labels.shape))
    if parts is None:
        if split_parts:
            lab = labels.detach().cpu().numpy()
            parts = torch.from_numpy(np.stack([local_parts(s) for s in lab]))
        else:
            parts = labels
    parts = parts.to(embedding.device)
    labels_dev = labels.to(embedding.device)
    l_emb, l_int, l_ext, l_reg = discriminative_loss(
        embedding, parts, labels_dev, delta_d=delta_d, alpha=alpha, beta=beta, gamma=gamma
    )
    background = labels_dev == 0
    if myelin is not None:
        background = background | myelin.to(embedding.device).bool()
    l_bg = background_loss(mask_logit, background)
    total = l_emb + background_weight * l_bg
    return EmbeddingLossTerms(total, l_emb, l_int, l_ext, l_reg, l_bg)
