"""Evaluate the self-touch candidate heuristic on synthetic ground truth.

Take a ground truth whose self-touching objects are listed (the synthetic generator's
``self_touches``), split each one at one of its self-contacts into two ids, the way a
greedy clustering fails (two pieces touching at the self-contact and at one false split
on the far side of the loop), compute contacts and candidates as the pipeline does
(background gaps up to ``gap`` voxels closed, edges through background scored 0), and
count how many of the planted splits come back as candidates and how many candidates
pair truly distinct objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .candidates import self_touch_candidates
from .contacts import find_contacts


@dataclass
class DetectionResult:
    planted: int  # self-touch splits made in the ground truth
    recovered: int  # of those, found as candidates
    candidates: int  # all candidates
    false_pairs: int  # candidates pairing two distinct ground-truth objects
    skipped: list = field(default_factory=list)  # self-touches that could not be split

    @property
    def recall(self) -> float:
        return self.recovered / self.planted if self.planted else float("nan")


def nn_affinities_from_labels(labels: np.ndarray, rng: np.random.Generator | None = None, noise: float = 0.0) -> np.ndarray:
    """Oracle nearest-neighbour affinities (3, z, y, x) for offsets (-1,0,0), (0,-1,0),
    (0,0,-1): ~1 between voxels of the same nonzero object, ~0 otherwise."""
    out = np.zeros((3,) + labels.shape, np.float32)
    for c in range(3):
        p = [slice(None)] * 3
        q = [slice(None)] * 3
        p[c] = slice(1, None)
        q[c] = slice(0, -1)
        same = (labels[tuple(p)] == labels[tuple(q)]) & (labels[tuple(p)] != 0)
        val = same.astype(np.float32)
        if rng is not None and noise > 0:
            val = np.clip(np.abs(val - np.abs(rng.normal(0, noise, val.shape))), 0, 1).astype(np.float32)
        out[c][tuple(p)] = val
    return out


def plant_self_touch_splits(labels: np.ndarray, self_touches, gap: int = 2):
    """Split every listed self-touching object once.  Returns (split labels, planted
    pairs (original id, new id), skipped entries).

    A synthetic self-contact is a place where two parts of one object face each other
    across a membrane of at most ``gap`` voxels; the object is connected around a loop
    (e.g. dendrite - spine neck - head).  Each object voxel goes to whichever side of
    the contact it is geodesically nearer to (6-connected, inside the object), which
    is what a greedy clustering that trusted the contact would produce: two connected
    pieces facing each other at the contact and meeting at a false split on the far
    side of the loop."""
    planted, skipped = [], []
    work = labels.copy()
    next_id = int(labels.max()) + 1
    for touch in self_touches:
        oid = int(touch["id"])
        z, y, x = (int(round(v)) for v in touch["contact_zyx"])
        try:
            u, w = _facing_voxels(labels, oid, (z, y, x), gap)
            _geodesic_split(work, oid, u, w, next_id)
        except ValueError as err:
            skipped.append({"id": oid, "reason": str(err)})
            continue
        planted.append((oid, next_id))
        next_id += 1
    return work, planted, skipped


def _facing_voxels(labels, oid, zyx, gap):
    """Voxels ``u`` and ``u + (g + 1) e`` of the object with ``1 <= g <= gap`` background
    voxels between them along an in-plane axis, nearest to the listed contact."""
    z, y, x = zyx
    shape = labels.shape
    best = None
    for axis in (1, 2):
        step = np.zeros(3, int)
        step[axis] = 1
        for dz in range(-1, 2):
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    u = np.array([z + dz, y + dy, x + dx])
                    if not all(0 <= c < n for c, n in zip(u, shape)) or labels[tuple(u)] != oid:
                        continue
                    for g in range(1, gap + 1):
                        w = u + (g + 1) * step
                        if not all(0 <= c < n for c, n in zip(w, shape)):
                            break
                        if labels[tuple(u + g * step)] != 0:
                            break
                        if labels[tuple(w)] == oid:
                            cost = abs(dz) * 3 + abs(dy) + abs(dx)
                            if best is None or cost < best[0]:
                                best = (cost, tuple(u), tuple(w))
                            break
    if best is None:
        raise ValueError("no membrane-separated pair of the object near the contact")
    return best[1], best[2]


def _geodesic_split(labels, oid, u, w, new_id) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    mask = labels == oid
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    sub = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    index = -np.ones(sub.shape, np.int64)
    index[sub] = np.arange(int(sub.sum()))
    rows, cols = [], []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis] = slice(0, -1)
        b[axis] = slice(1, None)
        both = sub[tuple(a)] & sub[tuple(b)]
        rows.append(index[tuple(a)][both])
        cols.append(index[tuple(b)][both])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    n = int(sub.sum())
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    src = [index[tuple(np.asarray(p) - lo)] for p in (u, w)]
    dist = shortest_path(graph, directed=False, unweighted=True, indices=src)
    reach = np.isfinite(dist[0]) & np.isfinite(dist[1])
    if not reach[src[1]]:
        raise ValueError("the two sides of the contact are not connected inside the object")
    to_new = reach & (dist[1] < dist[0])
    coords = np.argwhere(sub)[to_new] + lo
    labels[tuple(coords.T)] = new_id


def evaluate_detection(
    labels: np.ndarray,
    self_touches,
    *,
    theta: float = 0.25,
    gap: int = 2,
    noise: float = 0.0,
    seed: int = 0,
    block_shape=None,
) -> DetectionResult:
    split, planted, skipped = plant_self_touch_splits(labels, self_touches, gap)
    origin = {new: old for old, new in planted}
    truth = split.copy()
    for new, old in origin.items():
        truth[truth == new] = old
    rng = np.random.default_rng(seed)
    affs = nn_affinities_from_labels(truth, rng, noise)
    contacts = find_contacts(split, affs, block_shape=block_shape, gap=gap)
    cands = self_touch_candidates(contacts, theta=theta)
    pairs = {(int(a), int(b)) for a, b in zip(cands["seg_a"], cands["seg_b"])}
    recovered = sum(1 for old, new in planted if (min(old, new), max(old, new)) in pairs)

    def true_id(s):
        return origin.get(s, s)

    false_pairs = sum(1 for a, b in pairs if true_id(a) != true_id(b))
    return DetectionResult(len(planted), recovered, len(pairs), false_pairs, skipped)
