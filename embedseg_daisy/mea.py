"""Mean embedding agglomeration decision (paper section 2.3, Figs. 2, S12-S14).

For a candidate ``(s1, s2, centroid)`` the embedding net runs on one patch centred on
the centroid (input ``(20, 128, 128)``, output crop ``(16, 96, 96)``).  The mean
embeddings of ``s1`` and ``s2`` restricted to the focal window ``(5, 32, 32)`` around
the centroid are compared in L1; the pair is merged iff ``d < θ_d`` (1.5, equal to the
loss margin δ_d).

:func:`patch_box_around` places the patch: centred on the centroid's voxel, shifted
inside the volume near its border (no padding when the volume is at least as large as
the patch); the focal window stays centred on the centroid's voxel (so it is
off-centre in a shifted patch) and is clamped into the output crop and the volume.
:func:`mea_decision` takes the embeddings and segmentation of the output crop and
the focal window in crop coordinates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

#: Net input patch (z, y, x), Fig. S7.
INPUT_SHAPE = (20, 128, 128)
#: Output crop (z, y, x), Fig. S7.
OUTPUT_SHAPE = (16, 96, 96)
#: Focal window (z, y, x): the paper's 32 x 32 x 5 (x, y, z).
FOCAL_SHAPE = (5, 32, 32)
#: Merge threshold on the L1 distance of the mean embeddings.
THETA_D = 1.5

Box = tuple[tuple[int, int, int], tuple[int, int, int]]

#: Values of :attr:`MeaResult.reason`.
REASONS = (
    "below_threshold",  # merge: d < theta_d
    "above_threshold",  # no merge: d >= theta_d
    "s1_absent",  # no merge: s1 has no voxel in the focal window
    "s2_absent",
    "both_absent",
    "non_finite",  # no merge: the distance is NaN/inf (bad embeddings)
)


@dataclass(frozen=True)
class PatchBoxes:
    """Where the MEA patch of one candidate lies.  Boxes are ``(begin, end)``."""

    center: tuple[int, int, int]  # the voxel the centroid rounds to (global)
    input_box: Box  # net input, global; outside the volume only if the volume is smaller
    output_box: Box  # output crop (central part of the input), global
    focal_box: Box  # focal window, global
    focal_in_input: Box  # focal window relative to input_box
    focal_in_output: Box  # focal window relative to output_box (pass to mea_decision)
    shift: tuple[int, int, int]  # input begin minus the begin of the centred patch
    pad_before: tuple[int, int, int]  # raw padding needed before the volume (0 normally)
    pad_after: tuple[int, int, int]

    @property
    def needs_padding(self) -> bool:
        return any(self.pad_before) or any(self.pad_after)

    @property
    def center_in_output(self) -> bool:
        """Whether the centroid's voxel lies in the output crop.  It does not when the
        contact is closer to the volume border than the crop margin
        (``(patch - output) // 2``, 2 x 16 x 16 voxels by default) and the volume has
        no context there; the focal window is then flush with the crop's side."""
        (ob, oe) = self.output_box
        return all(o0 <= c < o1 for o0, o1, c in zip(ob, oe, self.center))

    @property
    def focal_centered(self) -> bool:
        """Whether the focal window sits at the centre of the output crop."""
        (ob, oe), (fb, fe) = self.output_box, self.focal_box
        return all(f0 - o0 == (o1 - o0) // 2 - (f1 - f0) // 2 for o0, o1, f0, f1 in zip(ob, oe, fb, fe))


def _triple(v, name) -> tuple[int, int, int]:
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{name} needs three values (z, y, x), got {v!r}")
    return t  # type: ignore[return-value]


def patch_box_around(
    centroid: Sequence[float],
    patch_shape: Sequence[int],
    volume_shape: Sequence[int],
    *,
    output_shape: Sequence[int] = OUTPUT_SHAPE,
    focal_shape: Sequence[int] = FOCAL_SHAPE,
) -> PatchBoxes:
    """Input, output-crop and focal boxes of the MEA patch around a contact centroid.

    Args:
        centroid: ``(z, y, x)`` in voxels of the volume frame ``[0, volume_shape)``
            (the frame of the raw data the net reads; convert if it has context
            beyond the segmentation).
        patch_shape: net input shape, e.g. :data:`INPUT_SHAPE`.
        volume_shape: shape of the volume the patch must stay inside.
        output_shape: the output crop, centred in the input (``(patch - output)``
            must be even per axis to be exactly central; otherwise the extra voxel
            goes after).
        focal_shape: focal window.

    Placement per axis: the centre voxel is ``floor(centroid + 0.5)`` (clamped into
    the volume); the centred input begins at ``center - patch // 2`` and is shifted to
    ``[0, volume - patch]`` when the volume is large enough, else centred on the
    volume (padding needed, reported by ``pad_before``/``pad_after``).  The focal
    window begins at ``center - focal // 2`` and is shifted inside the intersection of
    the output crop and the volume (shrunk only if that intersection is smaller).
    """
    ps = _triple(patch_shape, "patch_shape")
    vs = _triple(volume_shape, "volume_shape")
    os_ = _triple(output_shape, "output_shape")
    fs = _triple(focal_shape, "focal_shape")
    if any(o > p for o, p in zip(os_, ps)):
        raise ValueError(f"output crop {os_} is larger than the patch {ps}")
    cen = np.asarray(centroid, np.float64)
    if cen.shape != (3,) or not np.all(np.isfinite(cen)):
        raise ValueError(f"centroid must be three finite numbers, got {centroid!r}")
    center, in_b, out_b, foc_b, foc_e, shift, pad_b, pad_a = [], [], [], [], [], [], [], []
    for a in range(3):
        c = int(math.floor(cen[a] + 0.5))
        c = min(max(c, 0), vs[a] - 1)
        ideal = c - ps[a] // 2
        if vs[a] >= ps[a]:
            b = min(max(ideal, 0), vs[a] - ps[a])
        else:
            b = -((ps[a] - vs[a]) // 2)
        ob = b + (ps[a] - os_[a]) // 2
        oe = ob + os_[a]
        lo, hi = max(ob, 0), min(oe, vs[a])  # where the focal window may go
        size = min(fs[a], hi - lo)
        fb = min(max(c - fs[a] // 2, lo), hi - size)
        center.append(c)
        in_b.append(b)
        out_b.append(ob)
        foc_b.append(fb)
        foc_e.append(fb + size)
        shift.append(b - ideal)
        pad_b.append(max(0, -b))
        pad_a.append(max(0, b + ps[a] - vs[a]))
    in_box = (tuple(in_b), tuple(b + p for b, p in zip(in_b, ps)))
    out_box = (tuple(out_b), tuple(b + o for b, o in zip(out_b, os_)))
    foc = (tuple(foc_b), tuple(foc_e))
    rel = lambda box, ref: (  # noqa: E731
        tuple(x - r for x, r in zip(box[0], ref[0])),
        tuple(x - r for x, r in zip(box[1], ref[0])),
    )
    return PatchBoxes(
        center=tuple(center),  # type: ignore[arg-type]
        input_box=in_box,  # type: ignore[arg-type]
        output_box=out_box,  # type: ignore[arg-type]
        focal_box=foc,  # type: ignore[arg-type]
        focal_in_input=rel(foc, in_box),  # type: ignore[arg-type]
        focal_in_output=rel(foc, out_box),  # type: ignore[arg-type]
        shift=tuple(shift),  # type: ignore[arg-type]
        pad_before=tuple(pad_b),  # type: ignore[arg-type]
        pad_after=tuple(pad_a),  # type: ignore[arg-type]
    )


def read_box(array: np.ndarray, box: Box, fill=0) -> np.ndarray:
    """``array[box]`` over the last three axes, filled with ``fill`` outside the array."""
    begin, end = box
    shape = array.shape[-3:]
    out = np.full(array.shape[:-3] + tuple(e - b for b, e in zip(begin, end)), fill, array.dtype)
    src, dst = [], []
    for b, e, s in zip(begin, end, shape):
        lo, hi = max(b, 0), min(e, s)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - b, hi - b))
    out[(..., *dst)] = array[(..., *src)]
    return out


@dataclass(frozen=True)
class MeaResult:
    """The MEA decision for one candidate."""

    distance: float  # L1 distance of the mean embeddings (nan when a segment is absent)
    merge: bool
    n_s1: int  # voxels of s1 in the focal window
    n_s2: int
    reason: str  # one of REASONS
    focal_box: Box  # the focal window used, patch coordinates

    def as_dict(self) -> dict:
        return asdict(self)


def default_focal_box(patch_shape: Sequence[int], focal_shape: Sequence[int] = FOCAL_SHAPE) -> Box:
    """Focal window centred in a patch (begin = patch // 2 - focal // 2), clamped inside."""
    ps = _triple(patch_shape, "patch_shape")
    fs = _triple(focal_shape, "focal_shape")
    begin, end = [], []
    for p, f in zip(ps, fs):
        f = min(f, p)
        b = min(max(p // 2 - f // 2, 0), p - f)
        begin.append(b)
        end.append(b + f)
    return tuple(begin), tuple(end)  # type: ignore[return-value]


def mea_decision(
    embeddings,
    segmentation,
    s1: int,
    s2: int,
    *,
    focal_box: Box | None = None,
    focal_shape: Sequence[int] = FOCAL_SHAPE,
    theta_d: float = THETA_D,
) -> MeaResult:
    """Merge decision for the candidate pair ``(s1, s2)``.

    Args:
        embeddings: ``(D, Z, Y, X)`` numpy array or torch tensor (any device; a
            leading batch axis of size 1 is accepted).
        segmentation: ``(Z, Y, X)`` labels on the same voxels (numpy or torch).
        s1, s2: the candidate segments.
        focal_box: focal window in patch coordinates ``(begin, end)``, e.g.
            ``PatchBoxes.focal_in_output``; default: ``focal_shape`` centred.
        focal_shape: used only without ``focal_box``.
        theta_d: merge iff ``d < theta_d``.

    Returns:
        :class:`MeaResult`; ``distance`` is ``sum |mu_s1 - mu_s2|`` over the embedding
        dimensions, computed in float64.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    is_torch = torch is not None and isinstance(embeddings, torch.Tensor)
    if is_torch and embeddings.dim() == 5 and embeddings.shape[0] == 1:
        embeddings = embeddings[0]
    elif not is_torch:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim == 5 and embeddings.shape[0] == 1:
            embeddings = embeddings[0]
    if embeddings.ndim != 4:
        raise ValueError(f"embeddings must be (D, Z, Y, X), got shape {tuple(embeddings.shape)}")
    spatial = tuple(int(s) for s in embeddings.shape[1:])
    if torch is not None and isinstance(segmentation, torch.Tensor):
        segmentation = segmentation.detach().cpu().numpy()
    seg = np.asarray(segmentation)
    if seg.shape != spatial:
        raise ValueError(f"segmentation shape {seg.shape} differs from the embeddings' {spatial}")
    if focal_box is None:
        focal_box = default_focal_box(spatial, focal_shape)
    begin, end = _triple(focal_box[0], "focal begin"), _triple(focal_box[1], "focal end")
    begin = tuple(min(max(b, 0), s) for b, s in zip(begin, spatial))
    end = tuple(min(max(e, b), s) for e, b, s in zip(end, begin, spatial))
    sl = tuple(slice(b, e) for b, e in zip(begin, end))
    win = seg[sl]
    m1 = win == s1
    m2 = win == s2
    n1, n2 = int(m1.sum()), int(m2.sum())
    box = (begin, end)
    if n1 == 0 or n2 == 0:
        reason = "both_absent" if n1 == n2 == 0 else ("s1_absent" if n1 == 0 else "s2_absent")
        return MeaResult(math.nan, False, n1, n2, reason, box)
    if is_torch:
        emb = embeddings[(slice(None), *sl)].to(torch.float64)
        d1 = torch.as_tensor(m1, device=emb.device)
        d2 = torch.as_tensor(m2, device=emb.device)
        mu1 = emb[:, d1].mean(dim=1)
        mu2 = emb[:, d2].mean(dim=1)
        dist = float((mu1 - mu2).abs().sum().item())
    else:
        emb = embeddings[(slice(None), *sl)].astype(np.float64, copy=False)
        mu1 = emb[:, m1].mean(axis=1)
        mu2 = emb[:, m2].mean(axis=1)
        dist = float(np.abs(mu1 - mu2).sum())
    if not math.isfinite(dist):
        return MeaResult(dist, False, n1, n2, "non_finite", box)
    merge = dist < theta_d
    return MeaResult(dist, merge, n1, n2, "below_threshold" if merge else "above_threshold", box)
