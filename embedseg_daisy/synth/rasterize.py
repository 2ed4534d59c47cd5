"""Numba kernels that turn ball skeletons into per-section part maps.

Section ``s`` is the projection of its slab ``[s * sz, (s + 1) * sz)`` (world
pixels): a ball of radius ``r`` whose centre is ``dz`` away from the slab projects
to a disc of radius ``sqrt(r^2 - dz^2)`` (``dz = 0`` inside the slab).  Pixels are
claimed by the ball with the lowest score ``d / (r_eff * (1 + ellipticity)) - 1``
(multiplicatively weighted, so a thin profile keeps a round territory around its
centre even where a thick neighbour overlaps it), where ``d`` is the in-plane
distance; a negative score means inside.  Pixel ``(y, x)``
has its centre at world ``(y + 0.5, x + 0.5)``.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def raster_balls(pts, r, pad, e2c, e2s, sz, best_score, best_idx):
    """Stamp the slab projections of all balls; keeps the lowest score per pixel.

    A ball claims a pixel when its score is below ``pad / r``: besides its own
    disc it may grow by up to ``pad * r_eff / r`` pixels into space no other ball
    claims more strongly, which packs neighbouring profiles like real neuropil.
    """
    Z, Y, X = best_score.shape
    for i in range(pts.shape[0]):
        ri = r[i]
        cz, cy, cx = pts[i, 0], pts[i, 1], pts[i, 2]
        s0 = max(int(np.floor((cz - ri) / sz)), 0)
        s1 = min(int(np.floor((cz + ri) / sz)), Z - 1)
        ec, es = e2c[i], e2s[i]
        amp = abs(ec) + abs(es)
        for s in range(s0, s1 + 1):
            lo = s * sz
            hi = lo + sz
            if cz < lo:
                dz = lo - cz
            elif cz > hi:
                dz = cz - hi
            else:
                dz = 0.0
            if dz >= ri:
                continue
            re = np.sqrt(ri * ri - dz * dz)
            grow = pad[i] / ri
            reach = re * (1.0 + amp) * (1.0 + grow) + 0.5
            y0 = max(int(np.floor(cy - reach - 0.5)), 0)
            y1 = min(int(np.ceil(cy + reach - 0.5)), Y - 1)
            x0 = max(int(np.floor(cx - reach - 0.5)), 0)
            x1 = min(int(np.ceil(cx + reach - 0.5)), X - 1)
            reach2 = reach * reach
            for y in range(y0, y1 + 1):
                dy = y + 0.5 - cy
                dy2 = dy * dy
                if dy2 > reach2:
                    continue
                for x in range(x0, x1 + 1):
                    dx = x + 0.5 - cx
                    d2 = dy2 + dx * dx
                    if d2 > reach2:
                        continue
                    if d2 > 1e-12:
                        mod = 1.0 + (ec * (dx * dx - dy2) + es * 2.0 * dx * dy) / d2
                    else:
                        mod = 1.0
                    score = np.sqrt(d2) / (re * mod) - 1.0
                    if score < grow and score < best_score[s, y, x]:
                        best_score[s, y, x] = score
                        best_idx[s, y, x] = i


@numba.njit(cache=True, nogil=True)
def raster_mito(pts, r, obj, sz, part, part_obj, mito):
    """Mark pixels inside a mitochondrion ball's slab projection that belong to its
    own object (organelles never leak into neighbours)."""
    Z, Y, X = part.shape
    for i in range(pts.shape[0]):
        ri = r[i]
        cz, cy, cx = pts[i, 0], pts[i, 1], pts[i, 2]
        s0 = max(int(np.floor((cz - ri) / sz)), 0)
        s1 = min(int(np.floor((cz + ri) / sz)), Z - 1)
        for s in range(s0, s1 + 1):
            lo = s * sz
            hi = lo + sz
            if cz < lo:
                dz = lo - cz
            elif cz > hi:
                dz = cz - hi
            else:
                dz = 0.0
            if dz >= ri:
                continue
            re2 = ri * ri - dz * dz
            re = np.sqrt(re2)
            y0 = max(int(np.floor(cy - re - 0.5)), 0)
            y1 = min(int(np.ceil(cy + re - 0.5)), Y - 1)
            x0 = max(int(np.floor(cx - re - 0.5)), 0)
            x1 = min(int(np.ceil(cx + re - 0.5)), X - 1)
            for y in range(y0, y1 + 1):
                dy = y + 0.5 - cy
                for x in range(x0, x1 + 1):
                    dx = x + 0.5 - cx
                    if dy * dy + dx * dx <= re2:
                        p = part[s, y, x]
                        if p >= 0 and part_obj[p] == obj[i]:
                            mito[s, y, x] = 1


@numba.njit(cache=True, inline="always")
def _continuous(a, b, part_obj, part_branch, part_t, part_r, br_parent, br_base, thr_min, thr_fac):
    """Whether two parts are the same object *and* close along its skeleton."""
    if a == b:
        return True
    if a < 0 or b < 0:
        return False
    if part_obj[a] != part_obj[b]:
        return False
    ba = part_branch[a]
    bb = part_branch[b]
    if ba == bb:
        g = abs(part_t[a] - part_t[b])
    elif br_parent[ba] == bb:
        g = part_t[a] + abs(part_t[b] - br_base[ba])
    elif br_parent[bb] == ba:
        g = part_t[b] + abs(part_t[a] - br_base[bb])
    elif br_parent[ba] >= 0 and br_parent[ba] == br_parent[bb]:
        g = part_t[a] + part_t[b] + abs(br_base[ba] - br_base[bb])
    else:
        return False
    thr = max(thr_min, thr_fac * max(part_r[a], part_r[b]))
    return g <= thr


@numba.njit(cache=True, nogil=True)
def membranes(part, part_obj, part_branch, part_t, part_r, br_parent, br_base, thr_min, thr_fac, width, out):
    """Boundary voxels (``out`` = 1) between parts that are not continuous.

    In-plane (y, x neighbours) between any two different objects and between
    distant parts of one object (self-contacts); across z only between distant
    parts of one object.  ``width`` 2 marks both voxels of an interface, 1 only
    the voxel with the lower coordinate.
    """
    Z, Y, X = part.shape
    po, pb, pt, pr = part_obj, part_branch, part_t, part_r
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                a = part[z, y, x]
                if x + 1 < X:
                    b = part[z, y, x + 1]
                    if a != b and not _continuous(a, b, po, pb, pt, pr, br_parent, br_base, thr_min, thr_fac):
                        out[z, y, x] = 1
                        if width > 1:
                            out[z, y, x + 1] = 1
                if y + 1 < Y:
                    b = part[z, y + 1, x]
                    if a != b and not _continuous(a, b, po, pb, pt, pr, br_parent, br_base, thr_min, thr_fac):
                        out[z, y, x] = 1
                        if width > 1:
                            out[z, y + 1, x] = 1
                if z + 1 < Z:
                    b = part[z + 1, y, x]
                    if a != b and a >= 0 and b >= 0 and po[a] == po[b]:
                        if not _continuous(a, b, po, pb, pt, pr, br_parent, br_base, thr_min, thr_fac):
                            out[z, y, x] = 1
                            out[z + 1, y, x] = 1


@numba.njit(cache=True, nogil=True)
def absorb(part, todo, iterations):
    """Give voxels flagged in ``todo`` the part of an in-plane neighbour, growing
    inwards from their edges for at most ``iterations`` sweeps.  Returns how many
    voxels are still unfilled (their ``todo`` stays 1)."""
    Z, Y, X = part.shape
    left = 0
    for z in range(Z):
        for it in range(iterations):
            changed = 0
            # collect first, then write, so the growth is one pixel per sweep
            ys = []
            xs = []
            vs = []
            for y in range(Y):
                for x in range(X):
                    if todo[z, y, x] == 0:
                        continue
                    v = -1
                    if x > 0 and todo[z, y, x - 1] == 0:
                        v = part[z, y, x - 1]
                    elif x + 1 < X and todo[z, y, x + 1] == 0:
                        v = part[z, y, x + 1]
                    elif y > 0 and todo[z, y - 1, x] == 0:
                        v = part[z, y - 1, x]
                    elif y + 1 < Y and todo[z, y + 1, x] == 0:
                        v = part[z, y + 1, x]
                    if v >= 0:
                        ys.append(y)
                        xs.append(x)
                        vs.append(v)
            for k in range(len(ys)):
                part[z, ys[k], xs[k]] = vs[k]
                todo[z, ys[k], xs[k]] = 0
                changed += 1
            if changed == 0:
                break
        for y in range(Y):
            for x in range(X):
                if todo[z, y, x]:
                    left += 1
    return left


@numba.njit(cache=True, nogil=True)
def synapses(part, boundary, part_post, part_ves, out):
    """Mark postsynaptic densities: boundary voxels of a postsynaptic part
    (``part_post`` true: dendrites, spines) that face a vesicle-filled part
    (``part_ves`` > 0.3) across at most 3 in-plane pixels."""
    Z, Y, X = part.shape
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                if boundary[z, y, x] == 0:
                    continue
                a = part[z, y, x]
                if a < 0 or not part_post[a]:
                    continue
                found = False
                for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                    for k in range(1, 4):
                        yy = y + k * dy
                        xx = x + k * dx
                        if yy < 0 or yy >= Y or xx < 0 or xx >= X:
                            break
                        b = part[z, yy, xx]
                        if b >= 0 and part_ves[b] > 0.3:
                            found = True
                            break
                        if boundary[z, yy, xx] == 0:
                            break
                    if found:
                        break
                if found:
                    out[z, y, x] = 1
