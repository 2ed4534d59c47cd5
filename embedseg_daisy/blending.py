"""Global patch lattice and bump-weighted blending (Lee et al. 2017; Lee et al. 2019, Sec. 3).

Lattice
-------
For a volume of ``V`` voxels (z, y, x) and an output patch (crop) ``O`` with stride
``S`` (default ``O // 2``: 50% overlap), the output crops start, per axis, at the
multiples of ``S`` from the volume origin that keep the crop inside the volume, plus
one crop flush with the far end (``V - O``), deduplicated.  An axis shorter than ``O``
gets a single patch at 0 whose crop sticks out of the volume (the outside part is
discarded).  The patches are the Cartesian product of the per-axis origins; **lattice
order** is the lexicographic order of the origins ``(z, y, x)``.  The net's input
patch ``I`` is centred on the crop: it starts ``(I - O) // 2`` before it.  All
coordinates here are voxels relative to the volume origin.

Bump weights
------------
Output voxel ``i`` of ``n`` along an axis has ``u = (i + 1) / (n + 1)``; a patch voxel's
log-weight is ``logit = -sum_axes (u (1 - u)) ** -1.5`` (about -8 at the centre and
-970 at the border of a 96-voxel axis).  A blended value is

    out(p) = sum_k w_k(p) y_k(p) / sum_k w_k(p),   w_k = exp(logit_k - max_k logit_k),

computed in log space: without subtracting the per-voxel maximum ``exp(-970 * 3)``
underflows to 0 even in float64 and voxels covered only by crop borders get 0 / 0.

Affinities: patch ``k`` gives channel ``c`` at ``p`` (the edge ``(p, p + o_c)``) a weight
only if ``p + o_c`` also lies in its crop (embedding nets compute the affinity from the
two voxels' embeddings), so every channel has its own normalisation; an edge whose
partner is outside the volume is not an edge (value 0, weight 0).

Separable evaluation
--------------------
The patches covering a voxel — and, per channel, the patches whose crop also holds the
partner — are a Cartesian product of per-axis origin sets, and the log-weight is a sum
over axes.  Hence ``max_k logit_k`` is the sum of per-axis maxima and ``sum_k w_k`` the
product of per-axis sums, so the normalised weight ``w_k(p) / sum_j w_j(p)`` is the
product of three 1-D normalised weights (one softmax per axis, in log space).
:class:`Lattice` computes those 1-D tables once per volume (float64, from global
coordinates only), so a patch's normalised weights never depend on which box asked
for them; inference adds ``y_k * weight_k`` in lattice order, with no running
``sum w`` to divide by.  :func:`blend_log_space` is the direct formula (dense
reference for tests).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Vec3 = tuple[int, int, int]
Box = tuple[Vec3, Vec3]  # (begin, end), voxels, end exclusive


def _vec3(values: Sequence[int], name: str) -> Vec3:
    vals = tuple(int(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 entries (z, y, x), got {values!r}")
    return vals  # type: ignore[return-value]


def default_stride(output_patch: Sequence[int]) -> Vec3:
    """50% overlap: half the output crop per axis (at least 1)."""
    return tuple(max(1, int(o) // 2) for o in output_patch)  # type: ignore[return-value]


def lattice_origins_1d(length: int, out: int, stride: int) -> np.ndarray:
    """Crop origins along one axis (int64, increasing): multiples of ``stride`` keeping the
    crop inside ``[0, length)``, plus ``length - out`` (flush with the far end)."""
    length, out, stride = int(length), int(out), int(stride)
    if length < 1 or out < 1 or stride < 1:
        raise ValueError(f"length, crop and stride must be positive, got {length}, {out}, {stride}")
    if length <= out:
        return np.zeros(1, dtype=np.int64)
    last = length - out
    origins = np.arange(0, last + 1, stride, dtype=np.int64)
    if origins[-1] != last:
        origins = np.append(origins, np.int64(last))
    return origins


def bump_logit_1d(n: int) -> np.ndarray:
    """Per-axis log-weight ``-(u (1 - u)) ** -1.5`` with ``u = (i + 1) / (n + 1)`` (float64)."""
    u = (np.arange(int(n), dtype=np.float64) + 1.0) / (int(n) + 1.0)
    return -((u * (1.0 - u)) ** -1.5)


def bump_logits(shape: Sequence[int]) -> np.ndarray:
    """Log-weights of a patch of ``shape`` (z, y, x): the sum of the per-axis logits (float64)."""
    z, y, x = (bump_logit_1d(n) for n in _vec3(shape, "shape"))
    return z[:, None, None] + y[None, :, None] + x[None, None, :]


def bump_weights(shape: Sequence[int]) -> np.ndarray:
    """``exp(logit - max logit)`` of one patch (1 at the centre; float64).  Borders of a
    96-voxel axis are ~exp(-960) relative to the centre, i.e. 0 in float64."""
    logits = bump_logits(shape)
    return np.exp(logits - logits.max())


def blend_log_space(values: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Direct log-space blend over axis 0: ``sum_k exp(l_k - m) y_k / sum_k exp(l_k - m)``
    with ``m = max_k l_k`` per element.  ``logits = -inf`` marks "no weight"; elements
    with no weight at all give 0.  float64.  (Dense reference; inference uses the
    separable tables of :class:`Lattice`.)"""
    values = np.asarray(values, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    m = logits.max(axis=0)
    none = ~np.isfinite(m)
    m = np.where(none, 0.0, m)
    w = np.exp(logits - m)  # exp(-inf) = 0
    num = (w * np.where(w > 0, values, 0.0)).sum(axis=0)
    den = w.sum(axis=0)
    return np.where(none, 0.0, num / np.where(none, 1.0, den))


@dataclass(frozen=True, order=True)
class Patch:
    """One lattice patch: grid ``index`` and output-crop ``origin`` (voxels, relative to
    the volume origin).  Ordering is lattice order."""

    index: Vec3
    origin: Vec3

    def output_box(self, output_patch: Sequence[int]) -> Box:
        end = tuple(o + int(s) for o, s in zip(self.origin, output_patch))
        return self.origin, end  # type: ignore[return-value]

    def input_box(self, output_patch: Sequence[int], input_patch: Sequence[int]) -> Box:
        ctx = context(output_patch, input_patch)
        begin = tuple(o - c for o, c in zip(self.origin, ctx))
        end = tuple(b + int(i) for b, i in zip(begin, input_patch))
        return begin, end  # type: ignore[return-value]


def context(output_patch: Sequence[int], input_patch: Sequence[int]) -> Vec3:
    """``(I - O) / 2`` per axis; raises unless the crop fits centred in the input."""
    out = []
    for o, i in zip(_vec3(output_patch, "output_patch"), _vec3(input_patch, "input_patch")):
        if o < 1 or i < o or (i - o) % 2:
            raise ValueError(
                f"output patch {tuple(output_patch)} must fit centred in input patch "
                f"{tuple(input_patch)} (I >= O and I - O even per axis)"
            )
        out.append((i - o) // 2)
    return tuple(out)  # type: ignore[return-value]


def normalize_box(box, volume_shape: Sequence[int]) -> Box:
    """``box`` as ``(begin, end)`` relative to the volume origin; accepts ``(begin, end)``,
    a tuple of 3 slices, or an object with ``begin``/``end`` (e.g. a funlib ``Roi``,
    taken as relative).  Raises unless non-empty and inside the volume."""
    if hasattr(box, "begin") and hasattr(box, "end"):
        begin, end = _vec3(box.begin, "box begin"), _vec3(box.end, "box end")
    elif len(box) == 3 and all(isinstance(s, slice) for s in box):
        begin = _vec3([s.start or 0 for s in box], "box")
        end = _vec3([s.stop for s in box], "box")
    else:
        begin, end = _vec3(box[0], "box begin"), _vec3(box[1], "box end")
    shape = _vec3(volume_shape, "volume_shape")
    for b, e, n in zip(begin, end, shape):
        if not 0 <= b < e <= n:
            raise ValueError(f"box {begin}..{end} is empty or not inside the volume {shape}")
    return begin, end


class Lattice:
    """The global patch lattice of one volume and its blending tables.

    ``Lattice(volume_shape, output_patch, stride=None)``; use :func:`get_lattice` for a
    cached instance.  All tables are computed from global coordinates, so a patch's
    weights are the same whichever box asks.
    """

    def __init__(self, volume_shape: Sequence[int], output_patch: Sequence[int], stride: Sequence[int] | None = None):
        self.volume_shape = _vec3(volume_shape, "volume_shape")
        self.output_patch = _vec3(output_patch, "output_patch")
        self.stride = default_stride(self.output_patch) if stride is None else _vec3(stride, "stride")
        for v, o, s in zip(self.volume_shape, self.output_patch, self.stride):
            if v < 1 or o < 1 or s < 1:
                raise ValueError(
                    f"volume {self.volume_shape}, crop {self.output_patch}, stride {self.stride}: all must be positive"
                )
            if s > o:
                raise ValueError(f"stride {self.stride} larger than the crop {self.output_patch} leaves gaps")
        self.origins: tuple[np.ndarray, np.ndarray, np.ndarray] = tuple(
            lattice_origins_1d(v, o, s) for v, o, s in zip(self.volume_shape, self.output_patch, self.stride)
        )  # type: ignore[assignment]
        self._tables: dict[tuple[int, int, bool], np.ndarray] = {}
        self._owners: dict[int, np.ndarray] = {}

    @property
    def grid_shape(self) -> Vec3:
        return tuple(len(o) for o in self.origins)  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(np.prod(self.grid_shape))

    def patch(self, index: Sequence[int]) -> Patch:
        index = _vec3(index, "index")
        return Patch(index, tuple(int(self.origins[a][index[a]]) for a in range(3)))  # type: ignore[arg-type]

    def patches(self) -> list[Patch]:
        """Every patch, in lattice order."""
        return [self.patch(ix) for ix in itertools.product(*(range(n) for n in self.grid_shape))]

    def axis_range_touching(self, axis: int, begin: int, end: int) -> range:
        """Indices of the origins along ``axis`` whose crop (inside the volume) meets ``[begin, end)``."""
        o = self.origins[axis]
        crop_end = np.minimum(o + self.output_patch[axis], self.volume_shape[axis])
        hit = np.flatnonzero((o < end) & (crop_end > begin))
        return range(int(hit[0]), int(hit[-1]) + 1) if hit.size else range(0)

    def patches_touching(self, box) -> list[Patch]:
        """Patches whose output crop intersects ``box``, in lattice order."""
        begin, end = normalize_box(box, self.volume_shape)
        ranges = [self.axis_range_touching(a, begin[a], end[a]) for a in range(3)]
        return [self.patch(ix) for ix in itertools.product(*ranges)]

    # ----------------------------------------------------------------- weights
    def axis_weights(self, axis: int, shift: int = 0, partner_in_crop: bool = True) -> np.ndarray:
        """Normalised 1-D weights ``(n_origins, O)`` float64 along ``axis`` for edges whose
        partner is ``shift`` voxels away along it (0 for voxel-wise outputs).

        Entry ``[j, i]`` belongs to voxel ``x = origins[j] + i``; it is 0 unless ``x`` and
        ``x + shift`` are inside the volume (and, with ``partner_in_crop``, ``i + shift``
        inside the crop); the non-zero entries of each ``x`` sum to 1 (a softmax of the
        bump logits over the patches covering ``x``, computed with the per-voxel maximum
        subtracted)."""
        key = (int(axis), int(shift), bool(partner_in_crop))
        table = self._tables.get(key)
        if table is None:
            table = self._axis_weights(*key)
            table.setflags(write=False)
            self._tables[key] = table
        return table

    def _axis_weights(self, axis: int, shift: int, partner_in_crop: bool) -> np.ndarray:
        length, out = self.volume_shape[axis], self.output_patch[axis]
        origins = self.origins[axis]
        i = np.arange(out, dtype=np.int64)
        x = origins[:, None] + i[None, :]
        valid = (x < length) & (x + shift >= 0) & (x + shift < length)
        if partner_in_crop:
            valid &= ((i + shift >= 0) & (i + shift < out))[None, :]
        logit = np.broadcast_to(bump_logit_1d(out)[None, :], x.shape)
        xv, lv = x[valid], logit[valid]
        m = np.full(length, -np.inf)
        np.maximum.at(m, xv, lv)
        e = np.exp(lv - m[xv])
        den = np.zeros(length)
        np.add.at(den, xv, e)
        # every voxel whose partner is inside the volume must be covered by some patch
        need = np.arange(length)
        need = need[(need + shift >= 0) & (need + shift < length)]
        if np.any(den[need] == 0):
            bad = int(need[den[need] == 0][0])
            raise ValueError(
                f"offset component {shift} on axis {axis}: no patch of crop {out} with stride "
                f"{self.stride[axis]} holds both voxel {bad} and its partner; use a smaller offset "
                f"or a larger overlap"
            )
        table = np.zeros(x.shape, dtype=np.float64)
        table[valid] = e / den[xv]
        return table

    def patch_axis_weights(
        self, patch: Patch, shift: Sequence[int] = (0, 0, 0), partner_in_crop: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three 1-D normalised weights (float64, length ``O`` per axis) of ``patch``."""
        return tuple(
            self.axis_weights(a, int(shift[a]), partner_in_crop)[patch.index[a]] for a in range(3)
        )  # type: ignore[return-value]

    def patch_weights(self, patch: Patch, shift: Sequence[int] = (0, 0, 0), partner_in_crop: bool = True) -> np.ndarray:
        """Normalised weights of ``patch`` over its crop (``O``, float64): the product of
        the per-axis tables.  Summed over all patches they are 1 on every covered voxel
        (edge) of the volume."""
        wz, wy, wx = self.patch_axis_weights(patch, shift, partner_in_crop)
        return wz[:, None, None] * (wy[:, None] * wx[None, :])[None]

    # ----------------------------------------------------------- nearest owner
    def axis_owner(self, axis: int) -> np.ndarray:
        """``(length,)`` int64: along ``axis``, the index of the origin whose crop centre is
        nearest to each voxel among the crops holding it (ties: the earlier origin)."""
        owner = self._owners.get(axis)
        if owner is None:
            length, out = self.volume_shape[axis], self.output_patch[axis]
            origins = self.origins[axis]
            x = np.arange(length, dtype=np.int64)
            # crops holding x: origins[lo..hi] (sorted origins, equal crop lengths)
            lo = np.searchsorted(origins + out, x, side="right")
            hi = np.searchsorted(origins, x, side="right") - 1
            owner = lo.copy()
            # doubled coordinates keep the half-voxel centres integral
            best = np.abs(2 * x - (2 * origins[lo] + out - 1))
            for t in range(1, int((hi - lo).max()) + 1 if length else 1):
                j = np.minimum(lo + t, hi)
                d = np.abs(2 * x - (2 * origins[j] + out - 1))
                better = (lo + t <= hi) & (d < best)  # strict: ties keep the earlier origin
                owner = np.where(better, j, owner)
                best = np.where(better, d, best)
            owner.setflags(write=False)
            self._owners[axis] = owner
        return owner

    def owned_box(self, patch: Patch) -> Box | None:
        """Voxels (a box) whose nearest crop centre is ``patch``'s, or ``None``."""
        begin, end = [], []
        for a in range(3):
            owner = self.axis_owner(a)  # non-decreasing
            b = int(np.searchsorted(owner, patch.index[a], side="left"))
            e = int(np.searchsorted(owner, patch.index[a], side="right"))
            if b == e:
                return None
            begin.append(b)
            end.append(e)
        return tuple(begin), tuple(end)  # type: ignore[return-value]


@lru_cache(maxsize=32)
def _cached_lattice(volume_shape: Vec3, output_patch: Vec3, stride: Vec3) -> Lattice:
    return Lattice(volume_shape, output_patch, stride)


def get_lattice(
    volume_shape: Sequence[int], output_patch: Sequence[int], stride: Sequence[int] | None = None
) -> Lattice:
    """A cached :class:`Lattice` (tables are built once per volume geometry)."""
    output_patch = _vec3(output_patch, "output_patch")
    stride = default_stride(output_patch) if stride is None else _vec3(stride, "stride")
    return _cached_lattice(_vec3(volume_shape, "volume_shape"), output_patch, stride)


def patches_touching(
    box, volume_shape: Sequence[int], output_patch: Sequence[int], stride: Sequence[int] | None = None
) -> list[Patch]:
    """Lattice patches whose output crop intersects ``box`` (voxels, relative to the
    volume origin), in lattice order."""
    return get_lattice(volume_shape, output_patch, stride).patches_touching(box)
