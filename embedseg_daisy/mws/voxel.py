"""Voxel-level Mutex Watershed (numba): plain and region mode with freezing.

Edges
    channel ``k`` at voxel ``p`` is the edge ``(p, p + offsets[k])`` with affinity
    ``a = affs[k, p] / 255``.  Attractive channels have priority ``a``, repulsive ones
    ``1 - a`` (uint8: ``255 - affs``).  Edges with a background endpoint, edges whose
    partner lies outside the array and priority-0 edges do not exist.
Order
    key descending, ``key = (priority << 55) | tiebreak(global edge id)`` (see
    :mod:`embedseg_daisy.mws.keys`).  With the default raster tie-break the order is
    produced by a counting sort on the priority byte over a raster sweep: no comparison
    sort, 4 bytes per edge (uint32 edge codes while the array has < 2**26 voxels).  The
    hashed tie-breaks sort each priority bucket.  Float affinities are ordered by their
    exact float priority (ties by key), for comparisons without ties.
Region mode
    ``inside`` is a box of the array; edges with both endpoints inside are internal,
    edges with exactly one endpoint inside are *cross* edges (the other endpoint lies
    in the context margin, which must cover the offsets' reach).  Rules, in key order:

    * attractive cross edge: freeze the inside cluster (globally it may merge with
      unknown outside material);
    * repulsive cross edge: an unfrozen inside cluster gets an *outside mutex*;
    * internal edge between unfrozen clusters: ordinary MWS;
    * attractive internal edge, W frozen, Y unfrozen, no W-Y mutex: merge (frozen) iff Y
      has no outside mutex and W has a certain mutex with every frozen mutex partner of
      Y, else Y freezes (deferred);
    * attractive internal edge between frozen clusters: deferred.

    Invariant: an unfrozen cluster *is* its global cluster at the same point of the
    global order (it only grows through edges incident to it, all of which the region
    sees, and it never met an attractive cross edge), and its mutexes are exactly the
    region mutexes plus the outside ones; a frozen cluster is a subset of its global
    cluster.  So every committed merge is one the global MWS makes: the labels are
    *fragments* refining the global partition, and an unfrozen fragment is a final
    global cluster.  Pre-merging any set that lies in one final cluster does not change
    the MWS result, so the MWS of the fragment graph (max key per fragment pair and
    type, :mod:`embedseg_daisy.mws.graph`) is the global MWS.
Output box
    ``output`` (default: ``inside``) restricts labelling to a sub-box: the region then
    acts as context for the output.  A fragment is reported *frozen* (not final) when
    its cluster is frozen or reaches outside the output box.  Freezing near region faces
    is conservative (noisy priorities make clusters meet attractive cross edges while
    still small, and two frozen clusters never merge), so a few voxels of extra context
    cut the number of fragments per object piece from tens to about 1-2 (see
    ``tests/test_mws_region.py::test_fragment_counts_report``).

Labels are ``1 + global raster index`` of the cluster's first voxel in the output box
(raster order); background is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import keys as K
from .kernels import (
    CROSS_BIT_32,
    CROSS_BIT_64,
    MODE_CODES,
    MODE_COUNT,
    MODE_KEYS,
    _edge_pass,
    _edge_pass_float,
    _keys_to_codes,
    _labels,
    _process_codes,
)


# ---------------------------------------------------------------- Python API

#: arrays with ``voxels << channel_bits`` below this use uint32 edge codes (tests lower it)
_CODES32_LIMIT = 1 << (CROSS_BIT_32 - 1)


@dataclass
class RegionResult:
    """Fragments of a region.

    labels: uint64 array of the output box (default: the inside box; 0 = background);
    ids: the sorted non-zero labels (1 + global raster index of the fragment's first
    voxel); frozen: per id, whether the fragment is not final (its cluster is frozen, so
    it may still merge with material outside the region, or it reaches outside the
    output box).  A fragment that is not frozen is a whole final global cluster.
    """

    labels: np.ndarray
    ids: np.ndarray
    frozen: np.ndarray

    @property
    def frozen_ids(self) -> np.ndarray:
        return self.ids[self.frozen]

    @property
    def final_ids(self) -> np.ndarray:
        return self.ids[~self.frozen]


def _prepare(affs, offsets, attractive, foreground, origin, volume_shape):
    affs = np.asarray(affs)
    if affs.ndim != 4:
        raise ValueError(f"affs must be (K, Z, Y, X), got shape {affs.shape}")
    nk = affs.shape[0]
    shape = tuple(int(s) for s in affs.shape[1:])
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 3)
    if offs.shape[0] != nk:
        raise ValueError(f"{offs.shape[0]} offsets for {nk} affinity channels")
    att = np.asarray(attractive, dtype=np.bool_).reshape(-1)
    if att.shape[0] != nk:
        raise ValueError(f"{att.shape[0]} attractive flags for {nk} affinity channels")
    if foreground is None:
        fg = np.ones(shape, dtype=np.bool_)
    else:
        fg = np.ascontiguousarray(foreground, dtype=np.bool_)
        if fg.shape != shape:
            raise ValueError(f"foreground shape {fg.shape} != affinity shape {shape}")
    origin = np.asarray(origin, dtype=np.int64).reshape(3)
    if volume_shape is None:
        vshape = origin + np.asarray(shape, dtype=np.int64)
    else:
        vshape = np.asarray(volume_shape, dtype=np.int64).reshape(3)
    if np.any(origin < 0) or np.any(origin + np.asarray(shape) > vshape):
        raise ValueError(f"array at {tuple(origin)} of shape {shape} exceeds the volume {tuple(vshape)}")
    K.check_key_space(nk, vshape)
    if affs.dtype != np.uint8 and not np.issubdtype(affs.dtype, np.floating):
        raise ValueError(f"affs must be uint8 or float, got {affs.dtype}")
    affs = np.ascontiguousarray(affs)
    kb = max(1, int(nk - 1).bit_length())
    if (int(np.prod(shape)) << kb) >= 1 << (CROSS_BIT_64 - 1):
        raise ValueError("array too large for the edge code")
    return affs, offs, att, fg, origin, vshape, shape, kb


def _inside_box(inside, shape, offs, origin, vshape):
    if inside is None:
        return np.zeros(3, np.int64), np.asarray(shape, np.int64)
    lo, hi = _box(inside, shape, "inside")
    # every edge of an inside voxel must either lie in the array or leave the volume
    neg = np.minimum(offs.min(axis=0), 0)
    pos = np.maximum(offs.max(axis=0), 0)
    for ax in range(3):
        if lo[ax] + neg[ax] < 0 and origin[ax] > 0:
            raise ValueError(
                f"axis {ax}: the context margin below the inside box ({lo[ax]}) is smaller than the "
                f"offsets' reach ({-neg[ax]}) and the array does not start at the volume border"
            )
        if hi[ax] + pos[ax] > shape[ax] and origin[ax] + shape[ax] < vshape[ax]:
            raise ValueError(
                f"axis {ax}: the context margin above the inside box ({shape[ax] - hi[ax]}) is smaller "
                f"than the offsets' reach ({pos[ax]}) and the array does not end at the volume border"
            )
    return lo, hi


def _order_codes(affs, fg, offs, att, lo, hi, kb, origin, vshape, tb_mode):
    """Edge codes of all existing edges touching the box, in processing order.

    Returns (codes, cross_bit): uint32 codes when the array is small enough (so that one
    compiled kernel serves every mode), else int64.
    """
    n_vox = int(np.prod(affs.shape[1:]))
    small = (n_vox << kb) < min(_CODES32_LIMIT, 1 << (CROSS_BIT_32 - 1))
    cross_bit = CROSS_BIT_32 if small else CROSS_BIT_64
    cdtype = np.uint32 if small else np.int64
    if affs.dtype == np.uint8:
        counts = np.zeros(256, np.int64)
        dummy = np.zeros(0, cdtype)
        _edge_pass(affs, fg, offs, att, lo, hi, MODE_COUNT, counts, counts, dummy, kb, cross_bit, origin, vshape,
                   tb_mode)
        # buckets laid out by descending priority
        starts = np.zeros(256, np.int64)
        starts[255:0:-1] = np.concatenate(([0], np.cumsum(counts[255:1:-1])))
        n = int(counts.sum())
        if tb_mode == K.TIEBREAK_RASTER:
            codes = np.empty(n, cdtype)
            _edge_pass(affs, fg, offs, att, lo, hi, MODE_CODES, counts, starts.copy(), codes, kb, cross_bit,
                       origin, vshape, tb_mode)
            return codes, cross_bit
        buf = np.empty(n, np.int64)
        _edge_pass(affs, fg, offs, att, lo, hi, MODE_KEYS, counts, starts.copy(), buf, kb, cross_bit,
                   origin, vshape, tb_mode)
        bounds = np.concatenate((starts[255:0:-1], [n])).astype(np.int64)
        _keys_to_codes(buf, bounds, np.asarray(affs.shape[1:], np.int64), lo, hi, offs, kb, cross_bit,
                       origin, vshape, tb_mode)
        return buf.astype(cdtype), cross_bit
    n = _edge_pass_float(affs, fg, offs, att, lo, hi, True, np.zeros(0, cdtype), np.zeros(0), np.zeros(0, np.uint64),
                         kb, cross_bit, origin, vshape, tb_mode)
    codes = np.empty(n, cdtype)
    prios = np.empty(n, np.float64)
    tbs = np.empty(n, np.uint64)
    _edge_pass_float(affs, fg, offs, att, lo, hi, False, codes, prios, tbs, kb, cross_bit, origin, vshape, tb_mode)
    order = np.lexsort((tbs, prios))[::-1]
    return codes[order], cross_bit


def _box(box, shape, name):
    lo = np.zeros(3, np.int64)
    hi = np.zeros(3, np.int64)
    if len(box) != 3:
        raise ValueError(f"{name} must be three slices (z, y, x)")
    for ax, s in enumerate(box):
        if isinstance(s, slice):
            start, stop, step = s.indices(shape[ax])
            if step != 1:
                raise ValueError(f"{name} slices must have step 1")
        else:
            start, stop = (int(v) for v in s)
        if not 0 <= start < stop <= shape[ax]:
            raise ValueError(f"{name} box {box} is empty or exceeds the array {shape}")
        lo[ax], hi[ax] = start, stop
    return lo, hi


def _run(affs, offsets, attractive, foreground, inside, origin, volume_shape, tiebreak, output=None):
    affs, offs, att, fg, origin, vshape, shape, kb = _prepare(
        affs, offsets, attractive, foreground, origin, volume_shape
    )
    tb_mode = K.tiebreak_mode(tiebreak)
    lo, hi = _inside_box(inside, shape, offs, origin, vshape)
    codes, cross_bit = _order_codes(affs, fg, offs, att, lo, hi, kb, origin, vshape, tb_mode)
    nz, ny, nx = shape
    lin_off = (offs[:, 0] * ny + offs[:, 1]) * nx + offs[:, 2]
    node = _process_codes(codes, nz * ny * nx, lin_off.astype(np.int64), att, kb, cross_bit)[0]
    del codes
    if output is None:
        olo, ohi = lo, hi
    else:
        olo, ohi = _box(output, shape, "output")
        if np.any(olo < lo) or np.any(ohi > hi):
            raise ValueError(f"output box {output} must lie inside the inside box")
    labels, ids, frozen = _labels(node, fg, lo, hi, olo, ohi, origin, vshape)
    return RegionResult(labels, ids, frozen)


def mutex_watershed(
    affs,
    offsets,
    attractive,
    foreground=None,
    origin=(0, 0, 0),
    volume_shape=None,
    *,
    tiebreak=K.DEFAULT_TIEBREAK,
) -> np.ndarray:
    """Mutex Watershed of a whole array; returns uint64 labels of shape (Z, Y, X).

    ``affs``: (K, Z, Y, X) uint8 (a = value / 255) or float in [0, 1] (exact float
    priorities, ties broken by key).  ``attractive``: (K,) bool.  ``foreground``:
    (Z, Y, X) bool or None (all foreground).  ``origin`` / ``volume_shape`` place the
    array in the whole volume and define the global keys (defaults: the array is the
    volume).  Background is 0; each cluster is labelled ``1 + global raster index`` of
    its first voxel.
    """
    return _run(affs, offsets, attractive, foreground, None, origin, volume_shape, tiebreak).labels


def mutex_watershed_region(
    affs,
    offsets,
    attractive,
    foreground,
    inside,
    origin=(0, 0, 0),
    volume_shape=None,
    *,
    tiebreak=K.DEFAULT_TIEBREAK,
    output=None,
) -> RegionResult:
    """Region-mode MWS with freezing over the ``inside`` box of the array.

    ``inside``: three slices (z, y, x) of the array; the rest of the array is context
    and must cover the offsets' reach on every side that is not the volume border
    (``ValueError`` otherwise).  ``origin`` / ``volume_shape`` place the array in the
    volume (global keys and ids).  ``output``: optional sub-box of ``inside`` to label
    (default ``inside``).  Returns a :class:`RegionResult`: every fragment lies inside
    one cluster of the global MWS, and a fragment that is not frozen is a whole global
    cluster.
    """
    return _run(affs, offsets, attractive, foreground, inside, origin, volume_shape, tiebreak, output)
