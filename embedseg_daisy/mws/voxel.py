"""Voxel-level Mutex Watershed (numba): plain and region mode with freezing.

Edges
    channel ``k`` at voxel ``p`` is the edge ``(p, p + offsets[k])`` with affinity
    ``a = affs[k, p] / 255``.  Attractive channels have priority ``a``, repulsive ones
    ``1 - a`` (uint8: ``255 - affs``).  Edges with a background endpoint, edges whose
    partner lies outside the array and priority-0 edges do not exist.
Order
    key descending, ``key = (priority << 56) | tiebreak(global edge id)`` (see
    :mod:`embedseg_daisy.mws.keys`).  With the default raster tie-break the order is
    produced by a counting sort over a raster sweep (no comparison sort, 8 bytes per
    edge); the hashed tie-breaks sort each priority bucket.  Float affinities are
    ordered by their exact float priority (ties by key), for comparisons without ties.
Region mode
    ``inside`` is a box of the array; edges with both endpoints inside are internal,
    edges with exactly one endpoint inside are *cross* edges (the other endpoint lies
    in the context margin).  Cross edges never merge; an attractive cross edge freezes
    the inside cluster, a repulsive one gives an unfrozen cluster an *outside mutex*.
    Frozen clusters only absorb unfrozen clusters whose global state is certain (see
    :func:`embedseg_daisy.mws.unionfind.handle_edge`).  Every merge committed is one the
    global MWS makes, so the labels are fragments refining the global partition, and
    unfrozen fragments are final global clusters.

Labels are ``1 + global raster index`` of the cluster's first voxel (raster order of
the inside box); background is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import keys as K
from .unionfind import (
    FROZEN,
    grow_ht,
    grow_pool,
    grow_slots,
    handle_edge,
    find,
    need_ht,
    need_pool,
    need_slots,
    new_state,
)

CROSS = np.int64(1) << np.int64(62)
QIN = np.int64(1) << np.int64(61)
PMASK = (np.int64(1) << np.int64(61)) - np.int64(1)

MODE_COUNT = 0
MODE_CODES = 1
MODE_KEYS = 2


# ---------------------------------------------------------------- edge sweeps


@numba.njit(cache=True, inline="always")
def _range(lo, hi, o, n):
    """Owner coordinates p (0 <= p, p + o < n) with p or p + o in [lo, hi)."""
    a = max(0, -o, lo - max(o, 0))
    b = min(n, n - o, hi - min(o, 0))
    return a, b


@numba.njit(cache=True)
def _edge_pass(affs, fg, offs, att, ins_lo, ins_hi, mode, counts, starts, out, kb, origin, vshape, tb_mode):
    """Sweep all existing edges touching the inside box.

    MODE_COUNT: histogram of priorities into ``counts``.
    MODE_CODES: write edge codes ``(p << kb) | k | CROSS | QIN`` at ``starts[prio]++``,
    sweeping (k, z, y, x) descending, so each bucket is in descending raster-key order.
    MODE_KEYS: write keys at ``starts[prio]++``.
    """
    nk, nz, ny, nx = affs.shape
    vz, vy, vx = vshape[0], vshape[1], vshape[2]
    shift56 = np.uint64(56)
    for k in range(nk - 1, -1, -1):
        oz = offs[k, 0]
        oy = offs[k, 1]
        ox = offs[k, 2]
        is_att = att[k]
        z0, z1 = _range(ins_lo[0], ins_hi[0], oz, nz)
        y0, y1 = _range(ins_lo[1], ins_hi[1], oy, ny)
        x0, x1 = _range(ins_lo[2], ins_hi[2], ox, nx)
        for z in range(z1 - 1, z0 - 1, -1):
            pz = ins_lo[0] <= z and z < ins_hi[0]
            qz = ins_lo[0] <= z + oz and z + oz < ins_hi[0]
            for y in range(y1 - 1, y0 - 1, -1):
                py = pz and ins_lo[1] <= y and y < ins_hi[1]
                qy = qz and ins_lo[1] <= y + oy and y + oy < ins_hi[1]
                for x in range(x1 - 1, x0 - 1, -1):
                    a = np.int64(affs[k, z, y, x])
                    prio = a if is_att else 255 - a
                    if prio == 0:
                        continue
                    p_in = py and ins_lo[2] <= x and x < ins_hi[2]
                    q_in = qy and ins_lo[2] <= x + ox and x + ox < ins_hi[2]
                    if not (p_in or q_in):
                        continue
                    if not fg[z, y, x] or not fg[z + oz, y + oy, x + ox]:
                        continue
                    if mode == MODE_COUNT:
                        counts[prio] += 1
                    elif mode == MODE_CODES:
                        code = (np.int64((z * ny + y) * nx + x) << kb) | k
                        if not p_in:
                            code |= CROSS | QIN
                        elif not q_in:
                            code |= CROSS
                        pos = starts[prio]
                        starts[prio] = pos + 1
                        out[pos] = code
                    else:
                        t = K.tiebreak(
                            np.int64(k), origin[0] + z, origin[1] + y, origin[2] + x, vz, vy, vx, tb_mode
                        )
                        pos = starts[prio]
                        starts[prio] = pos + 1
                        out[pos] = np.int64((np.uint64(prio) << shift56) | t)


@numba.njit(cache=True)
def _keys_to_codes(buf, bounds, shape, ins_lo, ins_hi, offs, kb, origin, vshape, tb_mode):
    """Sort each priority bucket of keys, reverse it (descending) and decode in place."""
    nz, ny, nx = shape[0], shape[1], shape[2]
    mask56 = np.int64((1 << 56) - 1)
    for b in range(bounds.size - 1):
        s = bounds[b]
        e = bounds[b + 1]
        if e - s > 1:
            buf[s:e].sort()  # same priority byte: signed order == key order
            i = s
            j = e - 1
            while i < j:
                t = buf[i]
                buf[i] = buf[j]
                buf[j] = t
                i += 1
                j -= 1
        for i in range(s, e):
            k, gz, gy, gx = K.decode_tiebreak(buf[i] & mask56, vshape[0], vshape[1], vshape[2], tb_mode)
            z = gz - origin[0]
            y = gy - origin[1]
            x = gx - origin[2]
            p_in = (
                ins_lo[0] <= z and z < ins_hi[0] and ins_lo[1] <= y and y < ins_hi[1]
                and ins_lo[2] <= x and x < ins_hi[2]
            )
            zq = z + offs[k, 0]
            yq = y + offs[k, 1]
            xq = x + offs[k, 2]
            q_in = (
                ins_lo[0] <= zq and zq < ins_hi[0] and ins_lo[1] <= yq and yq < ins_hi[1]
                and ins_lo[2] <= xq and xq < ins_hi[2]
            )
            code = (np.int64((z * ny + y) * nx + x) << kb) | k
            if not p_in:
                code |= CROSS | QIN
            elif not q_in:
                code |= CROSS
            buf[i] = code


@numba.njit(cache=True)
def _edge_pass_float(affs, fg, offs, att, ins_lo, ins_hi, count_only, codes, prios, tbs, kb, origin, vshape, tb_mode):
    """Float affinities: collect codes, float priorities and tie-breaks; returns the count."""
    nk, nz, ny, nx = affs.shape
    n = 0
    for k in range(nk - 1, -1, -1):
        oz = offs[k, 0]
        oy = offs[k, 1]
        ox = offs[k, 2]
        is_att = att[k]
        z0, z1 = _range(ins_lo[0], ins_hi[0], oz, nz)
        y0, y1 = _range(ins_lo[1], ins_hi[1], oy, ny)
        x0, x1 = _range(ins_lo[2], ins_hi[2], ox, nx)
        for z in range(z1 - 1, z0 - 1, -1):
            for y in range(y1 - 1, y0 - 1, -1):
                for x in range(x1 - 1, x0 - 1, -1):
                    a = np.float64(affs[k, z, y, x])
                    prio = a if is_att else 1.0 - a
                    if not prio > 0.0:
                        continue
                    p_in = (
                        ins_lo[0] <= z and z < ins_hi[0] and ins_lo[1] <= y and y < ins_hi[1]
                        and ins_lo[2] <= x and x < ins_hi[2]
                    )
                    q_in = (
                        ins_lo[0] <= z + oz and z + oz < ins_hi[0] and ins_lo[1] <= y + oy
                        and y + oy < ins_hi[1] and ins_lo[2] <= x + ox and x + ox < ins_hi[2]
                    )
                    if not (p_in or q_in):
                        continue
                    if not fg[z, y, x] or not fg[z + oz, y + oy, x + ox]:
                        continue
                    if not count_only:
                        code = (np.int64((z * ny + y) * nx + x) << kb) | k
                        if not p_in:
                            code |= CROSS | QIN
                        elif not q_in:
                            code |= CROSS
                        codes[n] = code
                        prios[n] = prio
                        tbs[n] = K.tiebreak(
                            np.int64(k), origin[0] + z, origin[1] + y, origin[2] + x,
                            vshape[0], vshape[1], vshape[2], tb_mode,
                        )
                    n += 1
    return n


# ---------------------------------------------------------------- processing


@numba.njit(cache=True)
def _process_codes(codes, n_nodes, lin_off, att, kb):
    """Run the (region) MWS over edge codes given in processing order."""
    parent, size, flags, mid, htk, htv, meta, sh, sc, pn, pnx = new_state(n_nodes)
    kmask = (np.int64(1) << kb) - 1
    for i in range(codes.size):
        c = codes[i]
        k = c & kmask
        p = (c & PMASK) >> kb
        q = p + lin_off[k]
        a = att[k]
        cross = 0
        if c & CROSS:
            cross = 2 if (c & QIN) else 1
        elif not a:
            if need_ht(htk, meta):
                htk, htv = grow_ht(htk, htv, meta)
            if need_slots(sh, meta):
                sh, sc = grow_slots(sh, sc)
            if need_pool(pn, meta):
                pn, pnx = grow_pool(pn, pnx)
        handle_edge(parent, size, flags, mid, htk, htv, meta, sh, sc, pn, pnx, p, q, a, cross)
    return parent, flags, meta[0], htk.size, pn.size, meta[6], meta[7], meta[4]


@numba.njit(cache=True)
def _labels(parent, flags, fg, ins_lo, ins_hi, out_lo, out_hi, origin, vshape):
    """Label the output box (inside the inside box).  A cluster is reported frozen when
    it is frozen or has voxels in the inside box outside the output box."""
    nz, ny, nx = fg.shape
    vy = vshape[1]
    vx = vshape[2]
    escapes = np.uint8(4)
    for z in range(ins_lo[0], ins_hi[0]):
        zin = out_lo[0] <= z and z < out_hi[0]
        for y in range(ins_lo[1], ins_hi[1]):
            yin = zin and out_lo[1] <= y and y < out_hi[1]
            for x in range(ins_lo[2], ins_hi[2]):
                if yin and out_lo[2] <= x and x < out_hi[2]:
                    continue
                if fg[z, y, x]:
                    r = find(parent, (z * ny + y) * nx + x)
                    flags[r] |= escapes
    lab = np.zeros(parent.size, dtype=np.uint64)
    sz = out_hi[0] - out_lo[0]
    sy = out_hi[1] - out_lo[1]
    sx = out_hi[2] - out_lo[2]
    out = np.zeros((sz, sy, sx), dtype=np.uint64)
    ids = np.empty(sz * sy * sx, dtype=np.uint64)
    frz = np.empty(sz * sy * sx, dtype=np.bool_)
    m = 0
    for z in range(out_lo[0], out_hi[0]):
        for y in range(out_lo[1], out_hi[1]):
            for x in range(out_lo[2], out_hi[2]):
                if not fg[z, y, x]:
                    continue
                r = find(parent, (z * ny + y) * nx + x)
                if lab[r] == 0:
                    g = ((origin[0] + z) * vy + origin[1] + y) * vx + origin[2] + x
                    lab[r] = np.uint64(g + 1)
                    ids[m] = lab[r]
                    frz[m] = (flags[r] & (FROZEN | escapes)) != 0
                    m += 1
                out[z - out_lo[0], y - out_lo[1], x - out_lo[2]] = lab[r]
    return out, ids[:m].copy(), frz[:m].copy()


# ---------------------------------------------------------------- Python API


@dataclass
class RegionResult:
    """Fragments of a region.

    labels: uint64 array of the inside box (0 = background); ids: the sorted non-zero
    labels; frozen: per id, whether the fragment is frozen (may still merge with
    material outside the region).  Unfrozen fragments are final global clusters.
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
    if (int(np.prod(shape)) << kb) >= 1 << 61:
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
    """Edge codes of all existing edges touching the box, in processing order."""
    if affs.dtype == np.uint8:
        counts = np.zeros(256, np.int64)
        dummy = np.zeros(0, np.int64)
        _edge_pass(affs, fg, offs, att, lo, hi, MODE_COUNT, counts, dummy, dummy, kb, origin, vshape, tb_mode)
        # buckets laid out by descending priority
        starts = np.zeros(256, np.int64)
        starts[255:0:-1] = np.concatenate(([0], np.cumsum(counts[255:1:-1])))
        n = int(counts.sum())
        codes = np.empty(n, np.int64)
        mode = MODE_CODES if tb_mode == K.TIEBREAK_RASTER else MODE_KEYS
        _edge_pass(affs, fg, offs, att, lo, hi, mode, counts, starts.copy(), codes, kb, origin, vshape, tb_mode)
        if mode == MODE_KEYS:
            bounds = np.concatenate((starts[255:0:-1], [n])).astype(np.int64)
            _keys_to_codes(codes, bounds, np.asarray(affs.shape[1:], np.int64), lo, hi, offs, kb, origin, vshape, tb_mode)
        return codes
    dummy_i = np.zeros(0, np.int64)
    n = _edge_pass_float(
        affs, fg, offs, att, lo, hi, True, dummy_i, np.zeros(0), np.zeros(0, np.uint64), kb, origin, vshape, tb_mode
    )
    codes = np.empty(n, np.int64)
    prios = np.empty(n, np.float64)
    tbs = np.empty(n, np.uint64)
    _edge_pass_float(affs, fg, offs, att, lo, hi, False, codes, prios, tbs, kb, origin, vshape, tb_mode)
    order = np.lexsort((tbs, prios))[::-1]
    return codes[order]


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
    codes = _order_codes(affs, fg, offs, att, lo, hi, kb, origin, vshape, tb_mode)
    nz, ny, nx = shape
    lin_off = (offs[:, 0] * ny + offs[:, 1]) * nx + offs[:, 2]
    parent, flags = _process_codes(codes, nz * ny * nx, lin_off.astype(np.int64), att, kb)[:2]
    del codes
    if output is None:
        olo, ohi = lo, hi
    else:
        olo, ohi = _box(output, shape, "output")
        if np.any(olo < lo) or np.any(ohi > hi):
            raise ValueError(f"output box {output} must lie inside the inside box")
    labels, ids, frozen = _labels(parent, flags, fg, lo, hi, olo, ohi, origin, vshape)
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
    (at least the offsets' reach on every side that is not the volume border).
    Returns fragments of the inside box with per-fragment frozen flags; every fragment
    lies inside one cluster of the global MWS, and unfrozen fragments are exactly
    global clusters.
    """
    return _run(affs, offsets, attractive, foreground, inside, origin, volume_shape, tiebreak, output)
