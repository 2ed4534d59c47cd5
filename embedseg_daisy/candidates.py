"""Self-touch candidates (paper section 2.3) and a split helper for evaluation.

A segment pair is a candidate if (1) it shares more than one contact and (2) the
highest contact score S among its contacts exceeds ``theta`` (θ_self-touch = 0.25 in
the paper).  The candidate's location is the centroid of that best contact: the
place where the two segments most look like one object (in the paper's failure mode
the false split, Fig. 2), where MEA then looks.

``split_at_self_contact`` manufactures that failure mode from ground truth: it cuts
one object into two ids that touch at a given self-contact and at one false split
elsewhere on the loop the self-contact closes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path

from .contacts import CONTACT_DTYPE
from .errors import InputError

#: The paper's θ_self-touch.
THETA_SELF_TOUCH = 0.25

#: One row per adjacent segment pair (region adjacency graph with contact counts).
PAIR_SUMMARY_DTYPE = np.dtype(
    [
        ("seg_a", np.uint64),
        ("seg_b", np.uint64),
        ("n_contacts", np.int64),
        ("total_size", np.int64),  # interface edges over all contacts
        ("mean_score", np.float64),  # mean affinity over all interface edges of the pair
        ("best_contact_id", np.uint64),  # contact with the highest S
        ("best_score", np.float64),
        ("best_size", np.int64),
        ("best_z", np.float64),
        ("best_y", np.float64),
        ("best_x", np.float64),
    ]
)

#: A self-touch candidate (s1 = seg_a < s2 = seg_b).
CANDIDATE_DTYPE = np.dtype(
    [
        ("seg_a", np.uint64),
        ("seg_b", np.uint64),
        ("z", np.float64),  # centroid of the best contact, global voxel coordinates
        ("y", np.float64),
        ("x", np.float64),
        ("score", np.float64),  # best S
        ("n_contacts", np.int64),
        ("contact_id", np.uint64),  # id of the best contact
        ("contact_size", np.int64),
    ]
)


def _check_contacts(contacts) -> np.ndarray:
    contacts = np.asarray(contacts)
    missing = [f for f in ("contact_id", "seg_a", "seg_b", "size", "z", "y", "x", "score")
               if f not in (contacts.dtype.names or ())]
    if missing:
        raise InputError(f"contacts lack fields {missing} (expected {CONTACT_DTYPE.names})")
    return contacts


def contact_graph_summary(contacts: np.ndarray) -> np.ndarray:
    """Per adjacent segment pair: contact count, sizes, scores and the best contact.

    The best contact is the one with the highest score S; ties go to the larger
    contact, then to the smaller contact id (deterministic).  Rows are sorted by
    ``(seg_a, seg_b)``.  ``mean_score`` needs the ``aff_sum`` field (else it is the
    size-weighted mean of the scores).
    """
    contacts = _check_contacts(contacts)
    if contacts.shape[0] == 0:
        return np.empty(0, PAIR_SUMMARY_DTYPE)
    # order: pair, then best first
    order = np.lexsort(
        (
            contacts["contact_id"],
            -contacts["size"].astype(np.int64),
            -contacts["score"],
            contacts["seg_b"],
            contacts["seg_a"],
        )
    )
    c = contacts[order]
    new = np.r_[True, (c["seg_a"][1:] != c["seg_a"][:-1]) | (c["seg_b"][1:] != c["seg_b"][:-1])]
    starts = np.flatnonzero(new)
    out = np.empty(starts.shape[0], PAIR_SUMMARY_DTYPE)
    out["seg_a"] = c["seg_a"][starts]
    out["seg_b"] = c["seg_b"][starts]
    out["n_contacts"] = np.diff(np.r_[starts, c.shape[0]])
    size = c["size"].astype(np.int64)
    out["total_size"] = np.add.reduceat(size, starts)
    weighted = c["score"] * size
    out["mean_score"] = np.add.reduceat(weighted, starts) / out["total_size"]
    out["best_contact_id"] = c["contact_id"][starts]
    out["best_score"] = c["score"][starts]
    out["best_size"] = size[starts]
    out["best_z"] = c["z"][starts]
    out["best_y"] = c["y"][starts]
    out["best_x"] = c["x"][starts]
    return out


def self_touch_candidates(contacts: np.ndarray, theta: float = THETA_SELF_TOUCH) -> np.ndarray:
    """Segment pairs with > 1 contact whose best contact score S exceeds ``theta``.

    Args:
        contacts: ``CONTACT_DTYPE`` records (all contacts of the volume).
        theta: θ_self-touch; a pair qualifies when ``best S > theta`` (strict).

    Returns:
        ``CANDIDATE_DTYPE`` records sorted by ``(seg_a, seg_b)``.
    """
    summary = contact_graph_summary(contacts)
    keep = (summary["n_contacts"] > 1) & (summary["best_score"] > theta)
    s = summary[keep]
    out = np.empty(s.shape[0], CANDIDATE_DTYPE)
    out["seg_a"] = s["seg_a"]
    out["seg_b"] = s["seg_b"]
    out["z"] = s["best_z"]
    out["y"] = s["best_y"]
    out["x"] = s["best_x"]
    out["score"] = s["best_score"]
    out["n_contacts"] = s["n_contacts"]
    out["contact_id"] = s["best_contact_id"]
    out["contact_size"] = s["best_size"]
    return out


# ---------------------------------------------------------------- evaluation helper


def split_at_self_contact(
    labels: np.ndarray,
    object_id: int,
    contact_zyx: Sequence[float],
    *,
    axis: int | None = None,
    radius: float | None = None,
    new_id: int | None = None,
    require_loop: bool = True,
) -> tuple[np.ndarray, int]:
    """Split one object into two ids at a self-contact, like a greedy clustering would.

    A self-contact is a place where two parts of one object touch face to face; it
    closes a loop in the object.  The split reproduces the systematic error of
    section 2.3: the object becomes two connected pieces that touch each other at the
    self-contact and at one more place (the false split) on the far side of the loop.

    Method:

    1. The contact is the voxel pair ``u, v`` adjacent along ``axis``: ``u`` has
       ``floor(contact_zyx[axis])`` along ``axis``, ``v`` one more, the other two
       coordinates are rounded (half up).  ``axis`` may be omitted when exactly one
       coordinate of ``contact_zyx`` is a half-integer (an edge midpoint, e.g. the
       centroid of a flat contact); both voxels must belong to the object.
    2. The contact face is cut: every object-internal edge across the plane between
       ``u`` and ``v`` whose in-plane position lies in the connected component of the
       face (object on both sides of the plane) that contains the contact, limited to
       in-plane Euclidean distance ``<= radius`` from the contact when given.
    3. Every voxel of the object goes to the seed (``u`` keeps ``object_id``, ``v``
       gets ``new_id``) that is geodesically nearer (6-connected, within the object,
       cut edges removed); ties stay with ``u``.  Both pieces are connected (a
       geodesic Voronoi cell is), and ``u``/``v`` lie in different pieces, so the
       pieces touch at the contact; on the loop they meet at its geodesic midpoint.
       Object voxels reachable from neither seed (other components) keep ``object_id``.

    Args:
        labels: integer label volume (not modified).
        object_id: the object to split.
        contact_zyx: a point of the self-contact (see 1.).
        axis: normal axis of the contact face.
        radius: in-plane extent of the cut (voxels); ``None`` cuts the whole face
            component.  Use it when the face also runs into a genuine junction.
        new_id: id for the second piece; default ``labels.max() + 1``.
        require_loop: raise ``ValueError`` when cutting the face disconnects ``u``
            from ``v`` (no loop: the result would be a plain cut with one contact).

    Returns:
        ``(new_labels, new_id)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-d, got shape {labels.shape}")
    cz = np.asarray(contact_zyx, np.float64)
    if cz.shape != (3,):
        raise ValueError("contact_zyx needs three coordinates (z, y, x)")
    if axis is None:
        half = np.isclose(cz - np.floor(cz), 0.5)
        if half.sum() != 1:
            raise ValueError("give axis: contact_zyx is not an edge midpoint on exactly one axis")
        axis = int(np.flatnonzero(half)[0])
    axis = int(axis)
    if not 0 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    u = np.floor(cz + 0.5).astype(np.int64)
    u[axis] = int(np.floor(cz[axis]))
    v = u.copy()
    v[axis] += 1
    shape = np.asarray(labels.shape)
    if np.any(u < 0) or np.any(v >= shape):
        raise ValueError(f"contact {tuple(cz)} lies outside the volume")
    if labels[tuple(u)] != object_id or labels[tuple(v)] != object_id:
        raise ValueError(
            f"voxels {tuple(u)} and {tuple(v)} around the contact must both belong to object {object_id}"
        )
    if new_id is None:
        new_id = int(labels.max()) + 1
    new_id = int(new_id)
    if new_id == object_id or np.any(labels == new_id):
        raise ValueError(f"new_id {new_id} is already used")

    obj = labels == object_id
    # work in the object's bounding box
    bbox = ndimage.find_objects(obj.astype(np.uint8))[0]
    off = np.array([s.start for s in bbox])
    m = obj[bbox]
    lu, lv = tuple(u - off), tuple(v - off)

    # 2. the cut: face component containing the contact, in the plane between u and v
    lower = [slice(None)] * 3
    upper = [slice(None)] * 3
    lower[axis] = lu[axis]
    upper[axis] = lv[axis]
    face = m[tuple(lower)] & m[tuple(upper)]  # 2-d, the two in-plane axes
    inplane = [a for a in range(3) if a != axis]
    fpos = (lu[inplane[0]], lu[inplane[1]])
    comp, _ = ndimage.label(face)  # 4-connected in the plane
    cut2d = comp == comp[fpos]
    if radius is not None:
        g0, g1 = np.ogrid[: face.shape[0], : face.shape[1]]
        cut2d &= (g0 - fpos[0]) ** 2 + (g1 - fpos[1]) ** 2 <= float(radius) ** 2

    # 3. geodesic distances from u and v over the object graph without the cut edges
    n = int(m.sum())
    index = np.full(m.shape, -1, np.int64)
    index[m] = np.arange(n)
    rows, cols = [], []
    for a in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[a] = slice(1, None)
        lo[a] = slice(None, -1)
        both = m[tuple(hi)] & m[tuple(lo)]
        if a == axis:
            # edges between slice lu[axis] (lo side) and lv[axis] (hi side) in the cut
            sel = [slice(None)] * 3
            sel[a] = lu[axis]
            layer = both[tuple(sel)]
            both = both.copy()
            both[tuple(sel)] = layer & ~cut2d
        rows.append(index[tuple(hi)][both])
        cols.append(index[tuple(lo)][both])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    graph = coo_matrix((np.ones(r.shape[0], np.float64), (r, c)), shape=(n, n)).tocsr()
    iu, iv = index[lu], index[lv]
    dist = shortest_path(graph, method="D", directed=False, unweighted=True, indices=[iu, iv])
    du, dv = dist[0], dist[1]
    if require_loop and not np.isfinite(du[iv]):
        raise ValueError(
            f"cutting the contact face at {tuple(cz)} disconnects object {object_id}: "
            "no loop closes there, so it is not a self-contact (give a smaller radius?)"
        )
    to_v = dv < du  # ties and unreachable stay with u / the old id
    out = labels.copy()
    if not np.any(to_v):
        raise ValueError("the split produced an empty piece")
    piece_v = np.zeros(m.shape, bool)
    piece_v[m] = to_v  # boolean indexing enumerates in C order, like ``index``
    sub = out[bbox]  # a view: writes go to ``out``
    sub[piece_v] = new_id
    return out, new_id
