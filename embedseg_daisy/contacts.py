"""Contacts between adjacent segments (paper section 2.3), computed blockwise.

Definitions
-----------
Voxels are ``(z, y, x)``.  Nearest-neighbour affinities are float ``(3, Z, Y, X)``:
channel ``c`` at voxel ``p`` is the affinity of the edge ``(p, p + e_c)`` with
``e_0 = (-1, 0, 0)``, ``e_1 = (0, -1, 0)``, ``e_2 = (0, 0, -1)``.

* **Edge** ``(c, p)``: the voxel pair ``{p, p - u_c}`` (``u_c`` the unit vector of
  axis ``c``).  ``p`` is its **owner voxel** (the voxel with the larger coordinate
  along the edge axis, i.e. the voxel where its affinity is stored).  Edges exist for
  ``p[c] >= 1``.  Its midpoint is ``p - u_c / 2``.
* **Global edge id**: ``c + 3 * r(p)`` with ``r(p) = (z * Y + y) * X + x`` the global
  raster index of the owner voxel over the whole volume.  Within a block, raster order
  of ``(z, y, x, c)`` equals global edge-id order.
* **Interface edge** of the segment pair ``(a, b)``, ``a < b``: an edge whose two
  voxels carry labels ``a`` and ``b`` (either way round), both nonzero
  (foreground-restricted: background ``0`` never makes an interface).
* **Edge adjacency**: two interface edges of the *same pair* are adjacent iff their
  midpoints differ by at most one voxel along every axis (Chebyshev distance <= 1).
  Spelled out for edge ``(c, p)`` and ``(d, p + o)``:

  - ``d == c`` (parallel edges): any ``o`` in ``{-1, 0, 1}^3 \\ {0}`` (26 offsets);
    this joins a face-sharing sheet of edges (including in-plane diagonals) and a
    one-voxel-thick layer seen from both sides;
  - ``d != c`` (perpendicular edges): ``o[c] in {-1, 0}``, ``o[d] in {0, 1}``,
    ``o[other] in {-1, 0, 1}`` (12 offsets per ``d``); this joins edges that bend
    around a corner (sharing a voxel) and their neighbours along the third axis.

  Consequences: a face-to-face touch is one contact; two touches separated by a gap
  of >= 1 voxel along some axis (midpoints >= 2 apart) are two contacts; segments that
  only touch diagonally (no shared face) have no interface edge, hence no contact.
* **Contact**: a connected component of the interface edges of one pair.  Its
  ``size`` is its number of edges, its centroid the mean of its edge midpoints
  (global voxel coordinates) and its score ``S`` the mean affinity over its edges.

Exactness
---------
Everything that is summed is an integer, so results are bit-identical whatever the
block size: coordinate sums are sums of *doubled* midpoints (``2 p - u_c``), and the
affinity sum is fixed point, ``floor(a * 2**32 + 0.5)`` per edge (uint8 input ``k``
means ``a = k / 255``) (``AFF_SCALE``); scores are
exact to ~1e-10.  Limits: < 2**31 edges per contact, volume < 2**61 voxels.

Blockwise
---------
An edge belongs to the block whose write box contains its owner voxel (the voxel
with the larger coordinate along the edge axis - the midpoint rounded *up*, which is
where the affinity is stored).  :func:`block_contacts` receives ``seg`` and
``affs`` covering the write box plus a margin of >= 1 voxel on every side where the
volume continues (it only ever looks at the write box grown by one voxel, so its
output does not depend on how large the given margin is).  It returns

* ``pieces``: connected components of the block's owned interface edges (adjacency
  restricted to owned edges), each with ``piece_id`` = smallest global edge id in the
  piece, the pair, and additive statistics;
* ``links``: ``(piece_id, edge_id, seg_a, seg_b)`` for every owned edge adjacent to an interface
  edge of the same pair that is owned by another block and fully visible in the
  block's array (both voxels inside write box +- 1).  For every adjacent pair of edges
  in two different blocks at least one of the two blocks sees both edges, so links
  from both sides together cover all cross-block adjacencies;
* ``edge_to_piece``: ``(edge_id, piece_id, seg_a, seg_b)`` for every owned interface edge whose
  owner voxel lies in the outermost layer of the write box next to a face where the
  volume continues - the only edges another block can link to.

:func:`stitch_contacts` unions pieces over links (looking the foreign edge up in
``edge_to_piece``) and sums their statistics.  Links and face edges carry their pair,
so stitching can be sharded by pair (:func:`pair_shard`): no link crosses pairs.  A contact's ``contact_id`` is its
smallest piece id, i.e. the smallest global edge id in the contact: independent of
the block size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numba
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import InputError
from .union_find import _find

#: Fixed-point scale of affinity sums: an edge with affinity ``a`` adds
#: ``round(a * AFF_SCALE)``.
AFF_SCALE = 2**32

#: A contact piece of one block (additive statistics).
PIECE_DTYPE = np.dtype(
    [
        ("piece_id", np.uint64),  # smallest global edge id in the piece
        ("seg_a", np.uint64),  # smaller segment id
        ("seg_b", np.uint64),  # larger segment id
        ("size", np.int64),  # number of interface edges
        ("sum_z2", np.int64),  # sum of doubled midpoint z (2 p_z - [c == 0])
        ("sum_y2", np.int64),
        ("sum_x2", np.int64),
        ("aff_sum", np.int64),  # sum of round(affinity * AFF_SCALE)
    ]
)

#: A link from a piece to an adjacent interface edge owned by another block.  The
#: pair (the piece's and the edge's) lets a stitcher shard by pair (``pair_shard``).
LINK_DTYPE = np.dtype(
    [("piece_id", np.uint64), ("edge_id", np.uint64), ("seg_a", np.uint64), ("seg_b", np.uint64)]
)

#: Which piece an owned edge next to a block face belongs to.
EDGE_PIECE_DTYPE = np.dtype(
    [("edge_id", np.uint64), ("piece_id", np.uint64), ("seg_a", np.uint64), ("seg_b", np.uint64)]
)

#: A stitched contact.
CONTACT_DTYPE = np.dtype(
    [
        ("contact_id", np.uint64),  # smallest global edge id in the contact
        ("seg_a", np.uint64),
        ("seg_b", np.uint64),
        ("size", np.int64),  # number of interface edges
        ("z", np.float64),  # centroid: mean edge midpoint, global voxel coordinates
        ("y", np.float64),
        ("x", np.float64),
        ("score", np.float64),  # S: mean nearest-neighbour affinity over the edges
        ("aff_sum", np.int64),  # fixed-point affinity sum (score = aff_sum / AFF_SCALE / size)
    ]
)

Box = tuple[tuple[int, int, int], tuple[int, int, int]]


@dataclass
class BlockContacts:
    """What one block emits (one database batch per field)."""

    block_box: Box  # write box, global voxels, (begin, end)
    pieces: np.ndarray  # PIECE_DTYPE, sorted by piece_id
    links: np.ndarray  # LINK_DTYPE, unique, sorted
    edge_to_piece: np.ndarray  # EDGE_PIECE_DTYPE, sorted by edge_id


def _neighbour_table() -> np.ndarray:
    """``(3, 50, 4)`` rows ``(d, oz, oy, ox)``: edges adjacent to an edge of axis c."""
    table = np.zeros((3, 50, 4), np.int64)
    for c in range(3):
        rows = []
        for d in range(3):
            for o in itertools.product((-1, 0, 1), repeat=3):
                if d == c:
                    if o == (0, 0, 0):
                        continue
                elif o[c] not in (-1, 0) or o[d] not in (0, 1):
                    continue
                rows.append((d, *o))
        assert len(rows) == 50
        table[c] = rows
    return table


_NEIGHBOURS = _neighbour_table()


def as_box(box) -> Box:
    """``(begin, end)`` pair of int triples from a pair of triples or 3 slices."""
    if len(box) == 3 and all(isinstance(s, slice) for s in box):
        begin = tuple(int(s.start) for s in box)
        end = tuple(int(s.stop) for s in box)
    else:
        begin, end = box
        begin = tuple(int(v) for v in begin)
        end = tuple(int(v) for v in end)
    if len(begin) != 3 or len(end) != 3:
        raise ValueError(f"a box needs 3-d begin and end, got {box!r}")
    return begin, end  # type: ignore[return-value]


@numba.njit(cache=True)
def _block_kernel(seg, affs, emask, aff_mult, wb, we, lorigin, vshape, nb_lo, nb_hi, table):
    """Pieces, links and face edges of the owned interface edges of one block.

    ``seg``/``affs`` cover the write box grown by <= 1 voxel; ``wb``/``we`` is the write
    box in local coordinates; ``lorigin`` the global coordinate of local (0, 0, 0).
    """
    Z, Y, X = seg.shape
    VY = vshape[1]
    VX = vshape[2]
    idx = np.full((3, Z, Y, X), -1, np.int32)
    # pass 1: classify visible edges; owned edges get consecutive indices in
    # (z, y, x, c) raster order == global edge id order
    n_owned = 0
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                a = seg[z, y, x]
                if a == 0:
                    continue
                owned_voxel = wb[0] <= z < we[0] and wb[1] <= y < we[1] and wb[2] <= x < we[2]
                for c in range(3):
                    if c == 0:
                        if z == 0:
                            continue
                        b = seg[z - 1, y, x]
                    elif c == 1:
                        if y == 0:
                            continue
                        b = seg[z, y - 1, x]
                    else:
                        if x == 0:
                            continue
                        b = seg[z, y, x - 1]
                    if b == 0 or b == a or not emask[c, z, y, x]:
                        continue
                    if owned_voxel:
                        idx[c, z, y, x] = n_owned
                        n_owned += 1
                    else:
                        idx[c, z, y, x] = -2
    ez = np.empty(n_owned, np.int64)
    ey = np.empty(n_owned, np.int64)
    ex = np.empty(n_owned, np.int64)
    ec = np.empty(n_owned, np.int64)
    ea = np.empty(n_owned, np.uint64)
    eb = np.empty(n_owned, np.uint64)
    for z in range(wb[0], we[0]):
        for y in range(wb[1], we[1]):
            for x in range(wb[2], we[2]):
                for c in range(3):
                    k = idx[c, z, y, x]
                    if k < 0:
                        continue
                    ez[k] = z
                    ey[k] = y
                    ex[k] = x
                    ec[k] = c
                    s0 = seg[z, y, x]
                    if c == 0:
                        s1 = seg[z - 1, y, x]
                    elif c == 1:
                        s1 = seg[z, y - 1, x]
                    else:
                        s1 = seg[z, y, x - 1]
                    ea[k] = min(s0, s1)
                    eb[k] = max(s0, s1)
    # pass 2: union-find over owned edges; links to foreign edges
    parent = np.arange(n_owned)
    link_k = np.empty(1024, np.int64)
    link_gid = np.empty(1024, np.int64)
    n_links = 0
    for k in range(n_owned):
        c = ec[k]
        for r in range(table.shape[1]):
            d = table[c, r, 0]
            z2 = ez[k] + table[c, r, 1]
            y2 = ey[k] + table[c, r, 2]
            x2 = ex[k] + table[c, r, 3]
            if z2 < 0 or z2 >= Z or y2 < 0 or y2 >= Y or x2 < 0 or x2 >= X:
                continue
            j = idx[d, z2, y2, x2]
            if j == -1 or (j >= 0 and j < k):
                continue
            s0 = seg[z2, y2, x2]
            if d == 0:
                s1 = seg[z2 - 1, y2, x2]
            elif d == 1:
                s1 = seg[z2, y2 - 1, x2]
            else:
                s1 = seg[z2, y2, x2 - 1]
            if min(s0, s1) != ea[k] or max(s0, s1) != eb[k]:
                continue
            if j >= 0:
                rk = _find(parent, k)
                rj = _find(parent, j)
                if rk < rj:
                    parent[rj] = rk
                elif rj < rk:
                    parent[rk] = rj
            else:
                if n_links == link_k.shape[0]:
                    link_k = np.concatenate((link_k, np.empty(n_links, np.int64)))
                    link_gid = np.concatenate((link_gid, np.empty(n_links, np.int64)))
                gz = z2 + lorigin[0]
                gy = y2 + lorigin[1]
                gx = x2 + lorigin[2]
                link_k[n_links] = k
                link_gid[n_links] = d + 3 * ((gz * VY + gy) * VX + gx)
                n_links += 1
    # pass 3: pieces (root = smallest index = smallest global edge id)
    piece_of = np.empty(n_owned, np.int64)
    n_pieces = 0
    for k in range(n_owned):
        r = _find(parent, k)
        if r == k:
            piece_of[k] = n_pieces
            n_pieces += 1
        else:
            piece_of[k] = piece_of[r]
    p_id = np.empty(n_pieces, np.int64)
    p_a = np.empty(n_pieces, np.uint64)
    p_b = np.empty(n_pieces, np.uint64)
    p_size = np.zeros(n_pieces, np.int64)
    p_sz = np.zeros(n_pieces, np.int64)
    p_sy = np.zeros(n_pieces, np.int64)
    p_sx = np.zeros(n_pieces, np.int64)
    p_aff = np.zeros(n_pieces, np.int64)
    edge_gid = np.empty(n_owned, np.int64)
    n_face = 0
    is_face = np.zeros(n_owned, np.bool_)
    for k in range(n_owned):
        z = ez[k]
        y = ey[k]
        x = ex[k]
        c = ec[k]
        gz = z + lorigin[0]
        gy = y + lorigin[1]
        gx = x + lorigin[2]
        gid = c + 3 * ((gz * VY + gy) * VX + gx)
        edge_gid[k] = gid
        q = piece_of[k]
        if parent[k] == k:
            p_id[q] = gid
            p_a[q] = ea[k]
            p_b[q] = eb[k]
        p_size[q] += 1
        p_sz[q] += 2 * gz - (1 if c == 0 else 0)
        p_sy[q] += 2 * gy - (1 if c == 1 else 0)
        p_sx[q] += 2 * gx - (1 if c == 2 else 0)
        p_aff[q] += np.int64(np.floor(np.float64(affs[c, z, y, x]) * aff_mult + 0.5))
        face = (
            (nb_lo[0] and z == wb[0])
            or (nb_hi[0] and z == we[0] - 1)
            or (nb_lo[1] and y == wb[1])
            or (nb_hi[1] and y == we[1] - 1)
            or (nb_lo[2] and x == wb[2])
            or (nb_hi[2] and x == we[2] - 1)
        )
        if face:
            is_face[k] = True
            n_face += 1
    face_gid = np.empty(n_face, np.int64)
    face_piece = np.empty(n_face, np.int64)
    face_k = np.empty(n_face, np.int64)
    i = 0
    for k in range(n_owned):
        if is_face[k]:
            face_gid[i] = edge_gid[k]
            face_piece[i] = p_id[piece_of[k]]
            face_k[i] = k
            i += 1
    l_piece = np.empty(n_links, np.int64)
    for i in range(n_links):
        l_piece[i] = p_id[piece_of[link_k[i]]]
    return (
        p_id, p_a, p_b, p_size, p_sz, p_sy, p_sx, p_aff,
        l_piece, link_gid[:n_links].copy(), ea[link_k[:n_links]], eb[link_k[:n_links]],
        face_gid, face_piece, ea[face_k], eb[face_k],
    )


def _aff_multiplier(affs: np.ndarray) -> float:
    if affs.dtype == np.uint8:
        return AFF_SCALE / 255.0
    if np.issubdtype(affs.dtype, np.floating):
        return float(AFF_SCALE)
    raise InputError(f"affinities must be float (or uint8 = round(255 a)), got {affs.dtype}")


def block_contacts(
    seg: np.ndarray,
    affs_nn: np.ndarray,
    block_box,
    origin: Sequence[int],
    volume_shape: Sequence[int],
    edge_mask: np.ndarray | None = None,
) -> BlockContacts:
    """Contact pieces, links and face edges of one block.

    ``edge_mask`` (bool, shape of ``affs_nn``), when given, restricts interface edges to
    those where it is True (edge (c, p) stored at p, like the affinities); contacts are
    then components of the masked edges only.  Two calls with complementary masks give
    two disjoint families of contacts with disjoint piece and edge ids.

    Args:
        seg: ``(Z, Y, X)`` integer labels (0 = background) covering at least the write
            box grown by one voxel on every side where the volume continues.
        affs_nn: ``(3, Z, Y, X)`` nearest-neighbour affinities on the same voxels
            (float in [0, 1], or uint8 meaning ``round(255 a)``).
        block_box: write box ``(begin, end)`` in global voxels (or 3 slices).
        origin: global voxel coordinate of ``seg[0, 0, 0]``.
        volume_shape: shape of the whole volume (defines global ids and which faces
            have neighbours).

    Returns:
        :class:`BlockContacts` with ``pieces`` (``PIECE_DTYPE``), ``links``
        (``LINK_DTYPE``) and ``edge_to_piece`` (``EDGE_PIECE_DTYPE``).
    """
    seg = np.asarray(seg)
    affs_nn = np.asarray(affs_nn)
    if seg.ndim != 3:
        raise InputError(f"segmentation must be 3-d (z, y, x), got shape {seg.shape}")
    if affs_nn.shape != (3, *seg.shape):
        raise InputError(
            f"nearest-neighbour affinities must have shape {(3, *seg.shape)}, got {affs_nn.shape}"
        )
    begin, end = as_box(block_box)
    origin = np.asarray([int(v) for v in origin], np.int64)
    vshape = np.asarray([int(v) for v in volume_shape], np.int64)
    b = np.asarray(begin, np.int64)
    e = np.asarray(end, np.int64)
    if np.any(b < 0) or np.any(e > vshape) or np.any(e <= b):
        raise InputError(f"block box {block_box} is empty or outside the volume {tuple(vshape)}")
    # the region the kernel looks at: write box +- 1, clipped to the volume
    lo = np.maximum(b - 1, 0)
    hi = np.minimum(e + 1, vshape)
    arr_end = origin + np.asarray(seg.shape)
    if np.any(lo < origin) or np.any(hi > arr_end):
        raise InputError(
            f"arrays cover {tuple(origin)}..{tuple(arr_end)} but block {begin}..{end} needs "
            f"{tuple(lo)}..{tuple(hi)} (write box + 1 voxel where the volume continues)"
        )
    sl = tuple(slice(int(l - o), int(h - o)) for l, h, o in zip(lo, hi, origin))
    seg_c = np.ascontiguousarray(seg[sl])
    if seg_c.dtype != np.uint64:
        if np.issubdtype(seg_c.dtype, np.signedinteger) and seg_c.size and seg_c.min() < 0:
            raise InputError("segment ids must be non-negative")
        seg_c = seg_c.astype(np.uint64)
    affs_c = np.ascontiguousarray(affs_nn[(slice(None), *sl)])
    if edge_mask is None:
        emask_c = np.ones(affs_c.shape, np.bool_)
    else:
        if edge_mask.shape != affs_nn.shape:
            raise InputError(f"edge_mask must have shape {affs_nn.shape}, got {edge_mask.shape}")
        emask_c = np.ascontiguousarray(edge_mask[(slice(None), *sl)], dtype=np.bool_)
    mult = _aff_multiplier(affs_c)
    out = _block_kernel(
        seg_c, affs_c, emask_c, mult, b - lo, e - lo, lo, vshape, b > 0, e < vshape, _NEIGHBOURS
    )
    (p_id, p_a, p_b, p_size, p_sz, p_sy, p_sx, p_aff,
     l_piece, l_gid, l_a, l_b, f_gid, f_piece, f_a, f_b) = out

    pieces = np.empty(p_id.shape[0], PIECE_DTYPE)
    pieces["piece_id"] = p_id
    pieces["seg_a"] = p_a
    pieces["seg_b"] = p_b
    pieces["size"] = p_size
    pieces["sum_z2"] = p_sz
    pieces["sum_y2"] = p_sy
    pieces["sum_x2"] = p_sx
    pieces["aff_sum"] = p_aff  # pieces come out in piece_id order already

    links = np.empty(l_piece.shape[0], LINK_DTYPE)
    links["piece_id"] = l_piece
    links["edge_id"] = l_gid
    links["seg_a"] = l_a
    links["seg_b"] = l_b
    links = np.unique(links)

    e2p = np.empty(f_gid.shape[0], EDGE_PIECE_DTYPE)
    e2p["edge_id"] = f_gid
    e2p["piece_id"] = f_piece
    e2p["seg_a"] = f_a
    e2p["seg_b"] = f_b
    return BlockContacts(block_box=(begin, end), pieces=pieces, links=links, edge_to_piece=e2p)


def fill_gaps(seg: np.ndarray, affs_nn: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Close background gaps of up to ``gap`` voxels in-plane.  Returns the filled labels,
    the affinities with every edge that touches an originally-background voxel set to 0
    (the foreground-restricted metric graph), and the mask of those edges.

    The fill is a repeated in-plane max filter applied to background voxels only: local
    (a block with a margin of ``gap + 1`` computes exactly what the whole volume would)
    and deterministic (ties go to the larger id)."""
    from scipy import ndimage

    background = seg == 0
    filled = seg
    footprint = np.zeros((1, 3, 3), bool)
    footprint[0, 1, :] = footprint[0, :, 1] = True
    for _ in range(gap):
        grown = ndimage.grey_dilation(filled, footprint=footprint, mode="constant", cval=0)
        filled = np.where(filled == 0, grown, filled)
    affs = affs_nn.copy()
    through = np.zeros(affs_nn.shape, bool)
    for c, axis in enumerate((0, 1, 2)):
        # edge (p, p - e_axis) is stored at p: background at either end removes it
        touch = background.copy()
        sl_p = [slice(None)] * 3
        sl_q = [slice(None)] * 3
        sl_p[axis] = slice(1, None)
        sl_q[axis] = slice(0, -1)
        touch[tuple(sl_p)] |= background[tuple(sl_q)]
        affs[c][touch] = 0
        through[c] = touch
    return filled, affs, through


def block_contacts_with_gaps(
    seg: np.ndarray,
    affs_nn: np.ndarray,
    block_box,
    origin: Sequence[int],
    volume_shape: Sequence[int],
    gap: int,
) -> BlockContacts:
    """Contacts of a block in two families: *direct* contacts (both voxels foreground,
    scored by their affinities) and *gap* contacts (segments facing each other across
    at most ``gap`` background voxels in-plane, e.g. a self-contact across a membrane;
    scored 0, since the foreground-restricted graph has no edge there).  Each family's
    contacts are components of its own edges, so a self-contact that runs into a false
    split is two contacts, not one.  The arrays need a margin of ``gap + 1`` in-plane
    and 1 in z (the fill is local)."""
    direct = block_contacts(seg, affs_nn, block_box, origin, volume_shape)
    if gap <= 0:
        return direct
    filled, scored, through = fill_gaps(seg, affs_nn, gap)
    across = block_contacts(filled, scored, block_box, origin, volume_shape, edge_mask=through)
    return BlockContacts(
        block_box=direct.block_box,
        pieces=np.concatenate([direct.pieces, across.pieces]),
        links=np.concatenate([direct.links, across.links]),
        edge_to_piece=np.concatenate([direct.edge_to_piece, across.edge_to_piece]),
    )


def _concat(arrays, dtype: np.dtype) -> np.ndarray:
    if isinstance(arrays, np.ndarray):
        out = arrays
    else:
        arrays = list(arrays)
        out = np.concatenate(arrays) if arrays else np.empty(0, dtype)
    if out.dtype != dtype:
        try:
            out = out.astype(dtype)
        except (TypeError, ValueError) as exc:
            raise InputError(f"expected records with fields {dtype.names}, got {out.dtype}") from exc
    return out


def pieces_to_contacts(pieces: np.ndarray) -> np.ndarray:
    """Contacts (``CONTACT_DTYPE``) from complete, already-joined pieces."""
    out = np.empty(pieces.shape[0], CONTACT_DTYPE)
    size = pieces["size"].astype(np.int64)
    out["contact_id"] = pieces["piece_id"]
    out["seg_a"] = pieces["seg_a"]
    out["seg_b"] = pieces["seg_b"]
    out["size"] = size
    denom = 2.0 * size
    out["z"] = pieces["sum_z2"] / denom
    out["y"] = pieces["sum_y2"] / denom
    out["x"] = pieces["sum_x2"] / denom
    out["aff_sum"] = pieces["aff_sum"]
    out["score"] = pieces["aff_sum"] / float(AFF_SCALE) / size
    return out


def stitch_contacts(
    pieces: np.ndarray | Iterable[np.ndarray],
    edge_links: np.ndarray | Iterable[np.ndarray],
    edge_to_piece: np.ndarray | Iterable[np.ndarray],
    *,
    strict: bool = True,
) -> np.ndarray:
    """Join the pieces of all blocks into contacts.

    Args:
        pieces: ``PIECE_DTYPE`` records of every block (one array or a list of arrays).
        edge_links: ``LINK_DTYPE`` records of every block.
        edge_to_piece: ``EDGE_PIECE_DTYPE`` records of every block.
        strict: raise :class:`InputError` when a link names an edge no block mapped
            (a block's output is missing); otherwise such links are ignored.

    Returns:
        ``CONTACT_DTYPE`` records sorted by ``contact_id`` (= smallest global edge id
        of the contact, = smallest piece id).
    """
    pieces = _concat(pieces, PIECE_DTYPE)
    links = _concat(edge_links, LINK_DTYPE)
    e2p = _concat(edge_to_piece, EDGE_PIECE_DTYPE)
    n = pieces.shape[0]
    if n == 0:
        return np.empty(0, CONTACT_DTYPE)
    order = np.argsort(pieces["piece_id"], kind="stable")
    pieces = pieces[order]
    pid = pieces["piece_id"]
    if np.any(pid[1:] == pid[:-1]):
        raise InputError("duplicate piece ids: a block's contacts were stored twice")

    e2p = np.unique(e2p)
    if np.any(e2p["edge_id"][1:] == e2p["edge_id"][:-1]):
        raise InputError("an edge is mapped to two different pieces")
    pos = np.searchsorted(e2p["edge_id"], links["edge_id"])
    pos_c = np.minimum(pos, max(e2p.shape[0] - 1, 0))
    found = (pos < e2p.shape[0]) & (e2p["edge_id"][pos_c] == links["edge_id"]) if e2p.size else (
        np.zeros(links.shape[0], bool)
    )
    if strict and not np.all(found):
        missing = links["edge_id"][~found][:5]
        raise InputError(
            f"{int((~found).sum())} contact links name edges no block mapped "
            f"(e.g. edge ids {missing.tolist()}); is a block's output missing?"
        )
    other = e2p["piece_id"][pos_c[found]]
    mine = links["piece_id"][found]
    i = np.searchsorted(pid, mine)
    j = np.searchsorted(pid, other)
    ok = (i < n) & (j < n)
    ok[ok] &= (pid[i[ok]] == mine[ok]) & (pid[j[ok]] == other[ok])
    if strict and not np.all(ok):
        raise InputError("contact links name pieces that no block stored")
    i, j = i[ok], j[ok]
    graph = coo_matrix((np.ones(i.shape[0], np.int8), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)

    # contact id = smallest piece id: pieces are sorted, so the first of each component
    corder = np.lexsort((pid, comp))
    comp_s = comp[corder]
    starts = np.flatnonzero(np.r_[True, comp_s[1:] != comp_s[:-1]])
    ps = pieces[corder]
    joined = np.empty(starts.shape[0], PIECE_DTYPE)
    joined["piece_id"] = ps["piece_id"][starts]
    joined["seg_a"] = ps["seg_a"][starts]
    joined["seg_b"] = ps["seg_b"][starts]
    for f in ("size", "sum_z2", "sum_y2", "sum_x2", "aff_sum"):
        joined[f] = np.add.reduceat(ps[f], starts)
    bad = (np.maximum.reduceat(ps["seg_a"], starts) != joined["seg_a"]) | (
        np.minimum.reduceat(ps["seg_a"], starts) != joined["seg_a"]
    ) | (np.maximum.reduceat(ps["seg_b"], starts) != joined["seg_b"]) | (
        np.minimum.reduceat(ps["seg_b"], starts) != joined["seg_b"]
    )
    if np.any(bad):
        raise InputError("a contact joins pieces of different segment pairs: inconsistent blocks")
    joined = joined[np.argsort(joined["piece_id"], kind="stable")]
    return pieces_to_contacts(joined)


def pair_shard(seg_a, seg_b, n_shards: int) -> np.ndarray:
    """Deterministic shard (``0 .. n_shards - 1``) of segment pairs, for stitching
    contacts pair by pair: pieces, links and edge_to_piece rows of one shard stitch
    independently of the others.  A splitmix64-style hash of ``(seg_a, seg_b)``."""
    a = np.asarray(seg_a, np.uint64)
    b = np.asarray(seg_b, np.uint64)
    with np.errstate(over="ignore"):
        h = a * np.uint64(0x9E3779B97F4A7C15) ^ (b + np.uint64(0x632BE59BD9B4E019))
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h % np.uint64(n_shards)).astype(np.int64)


def iter_blocks(volume_shape: Sequence[int], block_shape: Sequence[int]):
    """Write boxes of a regular block grid (last blocks shrunk to the volume)."""
    vs = [int(v) for v in volume_shape]
    bs = [int(v) for v in block_shape]
    for z in range(0, vs[0], bs[0]):
        for y in range(0, vs[1], bs[1]):
            for x in range(0, vs[2], bs[2]):
                begin = (z, y, x)
                end = (min(z + bs[0], vs[0]), min(y + bs[1], vs[1]), min(x + bs[2], vs[2]))
                yield begin, end


def find_contacts(
    seg: np.ndarray,
    affs_nn: np.ndarray,
    block_shape: Sequence[int] | None = None,
    margin: int = 1,
    gap: int = 0,
) -> np.ndarray:
    """Contacts of a whole in-memory volume, optionally through the block path.

    With ``block_shape`` the volume is cut into blocks, each block gets its write box
    plus ``margin`` voxels, and the blocks are stitched; the result is identical to
    ``block_shape=None`` (one block).  Meant for tests and small volumes.
    """
    seg = np.asarray(seg)
    vshape = seg.shape
    if block_shape is None:
        block_shape = vshape
    if margin < 1:
        raise ValueError("margin must be >= 1")
    outs = []
    for begin, end in iter_blocks(vshape, block_shape):
        lo = [max(b - margin, 0) for b in begin]
        hi = [min(e + margin, v) for e, v in zip(end, vshape)]
        sl = tuple(slice(l, h) for l, h in zip(lo, hi))
        if gap:
            lo = [max(b - m, 0) for b, m in zip(begin, (margin, margin + gap, margin + gap))]
            hi = [min(e + m, v) for e, v, m in zip(end, vshape, (margin, margin + gap, margin + gap))]
            sl = tuple(slice(l, h) for l, h in zip(lo, hi))
            outs.append(
                block_contacts_with_gaps(seg[sl], affs_nn[(slice(None), *sl)], (begin, end), lo, vshape, gap)
            )
        else:
            outs.append(block_contacts(seg[sl], affs_nn[(slice(None), *sl)], (begin, end), lo, vshape))
    return stitch_contacts(
        [o.pieces for o in outs], [o.links for o in outs], [o.edge_to_piece for o in outs]
    )
