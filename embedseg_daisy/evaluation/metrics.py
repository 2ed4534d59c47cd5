"""Segmentation metrics: variation of information, adapted Rand, split/merge counts.

Everything is computed from one sparse contingency table (the non-zero overlaps
``n_ij`` between ground-truth object ``i`` and segment ``j``), built without
relabelling the volumes: a linear pass in raster order collapses runs of equal
``(gt, seg)`` pairs (a numba kernel), then only the runs are sorted.  On EM volumes
the runs are ~10-50x fewer than the voxels, so 10^8 voxels take seconds.

Conventions (the same for every function here)
------------------------------------------------
* ``T`` is the ground truth, ``S`` the segmentation (the paper's notation, Eq. 7).
* Voxels whose **ground-truth** label is in ``ignore_gt`` (default ``(0,)``,
  background / unlabelled) are dropped before anything is counted.
* The segmentation's label 0 is **not** special for VI and adapted Rand: voxels of a
  ground-truth object that the segmentation leaves at 0 form one ordinary segment
  "0" (so a method cannot improve its score by leaving voxels unassigned; note that
  CREMI's tools instead treat each such voxel as a singleton).  Split/merge counts,
  which count *objects*, ignore segment 0 by default (``ignore_seg``).
* VI split = H(S|T): grows when a ground-truth object is split across segments.
  VI merge = H(T|S): grows when a segment merges several ground-truth objects.
  Natural log (nats) by default; ``log_base=2`` gives bits (CREMI, waterz,
  scikit-image).  ``skimage.metrics.variation_of_information(gt, seg,
  ignore_labels=[0])`` returns ``[split, merge]`` in bits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numba
import numpy as np

__all__ = [
    "ARandResult",
    "Contingency",
    "ErrorCounts",
    "VIResult",
    "adapted_rand_error",
    "contingency_table",
    "evaluate_segmentation",
    "evaluate_table",
    "merge_tables",
    "relabel_table",
    "split_merge_counts",
    "variation_of_information",
]


# ---------------------------------------------------------------------------
# contingency table
# ---------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _pair_runs(g, s, ignore):
    """Runs of equal (g, s) in raster order, skipping voxels with g in ``ignore``.

    Two passes (count, then fill) so that memory is proportional to the runs.
    """
    n = g.size
    k = ignore.size
    runs = 0
    valid = False
    pg = g[0]  # the caller guarantees n >= 1
    ps = s[0]
    for i in range(n):
        gi = g[i]
        skip = False
        for t in range(k):
            if gi == ignore[t]:
                skip = True
                break
        if skip:
            valid = False
            continue
        si = s[i]
        if not valid or gi != pg or si != ps:
            runs += 1
            pg = gi
            ps = si
            valid = True
    rg = np.empty(runs, g.dtype)
    rs = np.empty(runs, s.dtype)
    rl = np.zeros(runs, np.int64)
    r = -1
    valid = False
    for i in range(n):
        gi = g[i]
        skip = False
        for t in range(k):
            if gi == ignore[t]:
                skip = True
                break
        if skip:
            valid = False
            continue
        si = s[i]
        if not valid or gi != pg or si != ps:
            r += 1
            rg[r] = gi
            rs[r] = si
            pg = gi
            ps = si
            valid = True
        rl[r] += 1
    return rg, rs, rl


def _as_label_array(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer labels, not {a.dtype}")
    return np.ascontiguousarray(a).reshape(-1)


def _ignore_array(ignore: Iterable[int], dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    vals = [int(x) for x in ignore if info.min <= int(x) <= info.max]
    return np.asarray(sorted(set(vals)), dtype=dtype)


@dataclass(frozen=True)
class Contingency:
    """Sparse contingency table: the non-zero overlaps, sorted by (gt, seg).

    ``gt_ids[k], seg_ids[k], counts[k]``: ``counts[k]`` voxels carry ground-truth
    label ``gt_ids[k]`` and segment label ``seg_ids[k]``.  Voxels with a ground-truth
    label in ``ignore_gt`` are not in the table.
    """

    gt_ids: np.ndarray
    seg_ids: np.ndarray
    counts: np.ndarray  # int64

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def gt_sizes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unique gt ids, their sizes, index of each table row's gt id)."""
        ids, inverse = np.unique(self.gt_ids, return_inverse=True)
        return ids, np.bincount(inverse, weights=self.counts).astype(np.int64), inverse

    def seg_sizes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unique segment ids, their sizes, index of each table row's segment id)."""
        ids, inverse = np.unique(self.seg_ids, return_inverse=True)
        return ids, np.bincount(inverse, weights=self.counts).astype(np.int64), inverse


def contingency_table(gt: np.ndarray, seg: np.ndarray, *, ignore_gt: Iterable[int] = (0,)) -> Contingency:
    """The sparse contingency table of ``gt`` (rows) against ``seg`` (columns)."""
    gt = np.asarray(gt)
    seg = np.asarray(seg)
    if gt.shape != seg.shape:
        raise ValueError(f"gt and seg must have the same shape, not {gt.shape} and {seg.shape}")
    g = _as_label_array(gt, "gt")
    s = _as_label_array(seg, "seg")
    if g.size == 0:
        return Contingency(g[:0].copy(), s[:0].copy(), np.zeros(0, np.int64))
    rg, rs, rl = _pair_runs(g, s, _ignore_array(ignore_gt, g.dtype))
    if rg.size == 0:
        return Contingency(rg, rs, rl)
    order = np.lexsort((rs, rg))
    rg, rs, rl = rg[order], rs[order], rl[order]
    new = np.ones(rg.size, bool)
    new[1:] = (rg[1:] != rg[:-1]) | (rs[1:] != rs[:-1])
    starts = np.flatnonzero(new)
    return Contingency(rg[starts], rs[starts], np.add.reduceat(rl, starts))


def _table(gt, seg, ignore_gt, table: Contingency | None) -> Contingency:
    if table is not None:
        return table
    return contingency_table(gt, seg, ignore_gt=ignore_gt)


def _require_voxels(table: Contingency) -> None:
    if table.total == 0:
        raise ValueError("no voxel has a ground-truth label outside ignore_gt: nothing to evaluate")


# ---------------------------------------------------------------------------
# variation of information
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VIResult:
    """VI split = H(S|T), VI merge = H(T|S), in units of ``log_base``."""

    split: float
    merge: float
    log_base: float = math.e

    @property
    def sum(self) -> float:
        return self.split + self.merge

    @property
    def units(self) -> str:
        return _units(self.log_base)


def _units(log_base: float) -> str:
    if log_base == math.e:
        return "nats"
    if log_base == 2:
        return "bits"
    if log_base == 10:
        return "dits"
    return f"log{log_base:g}"


def _vi_from_table(table: Contingency, log_base: float) -> VIResult:
    _require_voxels(table)
    if not log_base > 0 or log_base == 1:
        raise ValueError(f"log_base must be positive and not 1, not {log_base}")
    n = table.counts.astype(np.float64)
    total = n.sum()
    _, a, gi = table.gt_sizes()
    _, b, si = table.seg_sizes()
    p = n / total
    # H(S|T) = -sum p_ij log(n_ij / a_i); H(T|S) = -sum p_ij log(n_ij / b_j)
    split = float(-(p * np.log(n / a[gi])).sum())
    merge = float(-(p * np.log(n / b[si])).sum())
    scale = math.log(log_base)
    # clamp rounding noise (and -0.0) of a perfect score to exactly 0
    return VIResult(split / scale if split > 0 else 0.0, merge / scale if merge > 0 else 0.0, float(log_base))


def variation_of_information(
    gt: np.ndarray,
    seg: np.ndarray,
    *,
    log_base: float = math.e,
    ignore_gt: Iterable[int] = (0,),
    table: Contingency | None = None,
) -> VIResult:
    """VI split = H(S|T) and VI merge = H(T|S) of ``seg`` against ``gt``.

    Voxels whose ground-truth label is in ``ignore_gt`` are ignored entirely; segment
    label 0 is an ordinary segment (see the module docstring).  Nats by default,
    bits with ``log_base=2``.  ``table`` reuses a :func:`contingency_table`.
    """
    return _vi_from_table(_table(gt, seg, ignore_gt, table), log_base)


# ---------------------------------------------------------------------------
# adapted Rand
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ARandResult:
    """Adapted Rand error (SNEMI3D) with precision and recall defined on voxel pairs.

    Over unordered pairs of distinct voxels (ground-truth-ignored voxels dropped):

    * ``precision`` = (pairs together in both) / (pairs together in the
      segmentation) -- lowered by **merge** errors;
    * ``recall`` = (pairs together in both) / (pairs together in the ground truth)
      -- lowered by **split** errors;
    * ``error`` = 1 - F1 = 1 - 2 P R / (P + R).

    scikit-image's ``adapted_rand_error`` returns the same error but its
    ``prec``/``rec`` are these ``recall``/``precision`` (swapped).  A ratio with no
    pair in its denominator (all singletons) is 1.0.
    """

    error: float
    precision: float
    recall: float


def _arand_from_table(table: Contingency) -> ARandResult:
    _require_voxels(table)
    n = table.counts.astype(np.float64)
    _, a, _ = table.gt_sizes()
    _, b, _ = table.seg_sizes()
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    both = float((n * (n - 1)).sum())
    in_gt = float((a * (a - 1)).sum())
    in_seg = float((b * (b - 1)).sum())
    precision = both / in_seg if in_seg > 0 else 1.0
    recall = both / in_gt if in_gt > 0 else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return ARandResult(1.0 - f, precision, recall)


def adapted_rand_error(
    gt: np.ndarray,
    seg: np.ndarray,
    ignore_gt: Iterable[int] = (0,),
    *,
    table: Contingency | None = None,
) -> ARandResult:
    """Adapted Rand error, precision (merge-sensitive) and recall (split-sensitive).

    See :class:`ARandResult` for the exact definition.
    """
    return _arand_from_table(_table(gt, seg, ignore_gt, table))


# ---------------------------------------------------------------------------
# split / merge counts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCounts:
    """Object-level split and merge errors.

    ``splits``: ground-truth objects that overlap >= 2 segments substantially.
    ``merges``: segments that overlap >= 2 ground-truth objects substantially.
    ``split_excess`` / ``merge_excess``: sum over those of (pieces - 1), i.e. the
    number of merges / splits a proofreader needs to fix them.
    ``split_objects[gt_id]`` = the segments of a split object; ``merged_segments[seg_id]``
    = the ground-truth objects of a merging segment (ids as Python ints).
    """

    splits: int
    merges: int
    split_excess: int = 0
    merge_excess: int = 0
    split_objects: dict[int, list[int]] = field(default_factory=dict)
    merged_segments: dict[int, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable form (dict keys become strings)."""
        return {
            "splits": self.splits,
            "merges": self.merges,
            "split_excess": self.split_excess,
            "merge_excess": self.merge_excess,
            "split_objects": {str(k): v for k, v in self.split_objects.items()},
            "merged_segments": {str(k): v for k, v in self.merged_segments.items()},
        }


def _counts_from_table(
    table: Contingency, min_overlap_voxels: int, min_overlap_fraction: float, ignore_seg: Iterable[int]
) -> ErrorCounts:
    if table.total == 0:
        return ErrorCounts(0, 0)
    _, a, gi = table.gt_sizes()
    _, b, si = table.seg_sizes()
    n = table.counts
    smaller = np.minimum(a[gi], b[si])
    keep = (n >= min_overlap_voxels) & (n >= min_overlap_fraction * smaller)
    ign = _ignore_array(ignore_seg, table.seg_ids.dtype)
    if ign.size:
        keep &= ~np.isin(table.seg_ids, ign)
    g = table.gt_ids[keep]
    s = table.seg_ids[keep]

    def groups(key, other):
        order = np.lexsort((other, key))
        key, other = key[order], other[order]
        ids, starts, sizes = np.unique(key, return_index=True, return_counts=True)
        multi = sizes >= 2
        out = {int(i): [int(x) for x in other[st : st + sz]] for i, st, sz in zip(ids[multi], starts[multi], sizes[multi])}
        return out, int((sizes[multi] - 1).sum())

    split_objects, split_excess = groups(g, s)
    merged_segments, merge_excess = groups(s, g)
    return ErrorCounts(len(split_objects), len(merged_segments), split_excess, merge_excess, split_objects, merged_segments)


def split_merge_counts(
    gt: np.ndarray,
    seg: np.ndarray,
    *,
    min_overlap_voxels: int = 100,
    min_overlap_fraction: float = 0.05,
    ignore_gt: Iterable[int] = (0,),
    ignore_seg: Iterable[int] = (0,),
    table: Contingency | None = None,
) -> ErrorCounts:
    """Count split ground-truth objects and merging segments.

    An overlap of ``n_ij`` voxels between ground-truth object ``i`` (size ``a_i``)
    and segment ``j`` (size ``b_j``, both counted over non-ignored voxels) is
    *substantial* when ``n_ij >= min_overlap_voxels`` and ``n_ij >=
    min_overlap_fraction * min(a_i, b_j)``.  Measuring the fraction against the
    smaller of the two lets a small spine broken off a big dendrite count as a split
    while boundary jitter between two big objects does not.  Segments in
    ``ignore_seg`` (default: 0, unassigned) are no objects and never counted.
    """
    return _counts_from_table(_table(gt, seg, ignore_gt, table), min_overlap_voxels, min_overlap_fraction, ignore_seg)


# ---------------------------------------------------------------------------
# bundle
# ---------------------------------------------------------------------------


def evaluate_segmentation(
    gt: np.ndarray,
    seg: np.ndarray,
    log_base: float = math.e,
    *,
    ignore_gt: Iterable[int] = (0,),
    min_overlap_voxels: int = 100,
    min_overlap_fraction: float = 0.05,
) -> dict:
    """All metrics from one contingency table, as a JSON-serialisable dict.

    Keys: ``vi_split``, ``vi_merge``, ``vi_sum``, ``log_base`` ("e", "2", ...),
    ``vi_units`` ("nats"/"bits"), ``adapted_rand_error``, ``adapted_rand_precision``,
    ``adapted_rand_recall``, ``splits``, ``merges``, ``split_excess``,
    ``merge_excess``, ``split_objects``, ``merged_segments``, ``num_voxels``,
    ``num_gt_objects``, ``num_segments`` (segments touching non-ignored voxels,
    0 included if present), ``ignore_gt``, ``min_overlap_voxels``,
    ``min_overlap_fraction``.
    """
    ignore_gt = tuple(int(x) for x in ignore_gt)
    table = contingency_table(gt, seg, ignore_gt=ignore_gt)
    return evaluate_table(
        table,
        log_base,
        ignore_gt=ignore_gt,
        min_overlap_voxels=min_overlap_voxels,
        min_overlap_fraction=min_overlap_fraction,
    )


def merge_tables(tables: Iterable[Contingency]) -> Contingency:
    """One table from tables of disjoint parts of a volume (e.g. blocks)."""
    tables = list(tables)
    if not tables:
        return Contingency(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))
    g = np.concatenate([t.gt_ids.astype(np.uint64) for t in tables])
    s = np.concatenate([t.seg_ids.astype(np.uint64) for t in tables])
    c = np.concatenate([t.counts for t in tables])
    return _reduce(g, s, c)


def relabel_table(table: Contingency, seg_ids: np.ndarray, new_ids: np.ndarray) -> Contingency:
    """The table of a segmentation whose segments ``seg_ids`` become ``new_ids`` (merges)."""
    ids = table.seg_ids.astype(np.uint64)
    if len(seg_ids) == 0 or len(ids) == 0:
        return table
    order = np.argsort(seg_ids)
    sk = np.asarray(seg_ids, np.uint64)[order]
    sv = np.asarray(new_ids, np.uint64)[order]
    pos = np.minimum(np.searchsorted(sk, ids), len(sk) - 1)
    hit = sk[pos] == ids
    mapped = ids.copy()
    mapped[hit] = sv[pos[hit]]
    return _reduce(table.gt_ids.astype(np.uint64), mapped, table.counts)


def _reduce(g: np.ndarray, s: np.ndarray, c: np.ndarray) -> Contingency:
    if g.size == 0:
        return Contingency(g, s, c.astype(np.int64))
    order = np.lexsort((s, g))
    g, s, c = g[order], s[order], c[order]
    new = np.ones(g.size, bool)
    new[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    starts = np.flatnonzero(new)
    return Contingency(g[starts], s[starts], np.add.reduceat(c.astype(np.int64), starts))


def evaluate_table(
    table: Contingency,
    log_base: float = math.e,
    *,
    ignore_gt: Iterable[int] = (0,),
    min_overlap_voxels: int = 100,
    min_overlap_fraction: float = 0.05,
) -> dict:
    """:func:`evaluate_segmentation` from a contingency table (e.g. merged over blocks)."""
    ignore_gt = tuple(int(x) for x in ignore_gt)
    vi = _vi_from_table(table, log_base)
    ar = _arand_from_table(table)
    counts = _counts_from_table(table, min_overlap_voxels, min_overlap_fraction, (0,))
    return {
        "vi_split": vi.split,
        "vi_merge": vi.merge,
        "vi_sum": vi.sum,
        "log_base": "e" if log_base == math.e else f"{log_base:g}",
        "vi_units": vi.units,
        "adapted_rand_error": ar.error,
        "adapted_rand_precision": ar.precision,
        "adapted_rand_recall": ar.recall,
        **counts.to_dict(),
        "num_voxels": table.total,
        "num_gt_objects": int(np.unique(table.gt_ids).size),
        "num_segments": int(np.unique(table.seg_ids).size),
        "ignore_gt": [int(x) for x in ignore_gt],
        "min_overlap_voxels": int(min_overlap_voxels),
        "min_overlap_fraction": float(min_overlap_fraction),
    }
