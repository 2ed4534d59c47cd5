"""Contacts: exact hand-made cases, a brute-force reference, block-size independence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from embedseg_daisy.contacts import (
    AFF_SCALE,
    CONTACT_DTYPE,
    EDGE_PIECE_DTYPE,
    LINK_DTYPE,
    PIECE_DTYPE,
    block_contacts,
    find_contacts,
    iter_blocks,
    pair_shard,
    stitch_contacts,
)
from embedseg_daisy.errors import InputError

UNIT = np.eye(3, dtype=np.int64)


def reference_contacts(seg, affs):
    """Brute force straight from the definitions (small volumes only)."""
    Z, Y, X = seg.shape
    edges = []  # (pair, doubled midpoint, affinity, edge id)
    for c in range(3):
        for p in np.argwhere(np.ones(seg.shape, bool)):
            if p[c] == 0:
                continue
            q = p - UNIT[c]
            a, b = int(seg[tuple(p)]), int(seg[tuple(q)])
            if a == 0 or b == 0 or a == b:
                continue
            gid = c + 3 * ((p[0] * Y + p[1]) * X + p[2])
            edges.append(((min(a, b), max(a, b)), 2 * p - UNIT[c], float(affs[c][tuple(p)]), gid))
    n = len(edges)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if edges[i][0] == edges[j][0] and np.max(np.abs(edges[i][1] - edges[j][1])) <= 2:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = []
    for members in groups.values():
        pair = edges[members[0]][0]
        mids = np.array([edges[i][1] for i in members]) / 2.0
        out.append(
            dict(
                contact_id=min(edges[i][3] for i in members),
                pair=pair,
                size=len(members),
                centroid=mids.mean(axis=0),
                score=float(np.mean([edges[i][2] for i in members])),
            )
        )
    return sorted(out, key=lambda d: d["contact_id"])


def check_against_reference(contacts, ref):
    assert contacts.dtype == CONTACT_DTYPE
    assert len(contacts) == len(ref)
    for got, want in zip(contacts, ref):
        assert int(got["contact_id"]) == want["contact_id"]
        assert (int(got["seg_a"]), int(got["seg_b"])) == want["pair"]
        assert int(got["size"]) == want["size"]
        np.testing.assert_allclose([got["z"], got["y"], got["x"]], want["centroid"], rtol=0, atol=1e-9)
        assert abs(got["score"] - want["score"]) < 1e-8


def random_affs(shape, rng):
    return rng.random((3, *shape), dtype=np.float32)


def random_labels(shape, rng, n_labels=6, zoom=3, background=0.15):
    """Blobby random labels with some background."""
    coarse_shape = tuple(max(1, s // zoom + 1) for s in shape)
    coarse = rng.integers(1, n_labels + 1, size=coarse_shape).astype(np.uint64)
    up = np.repeat(np.repeat(np.repeat(coarse, zoom, 0), zoom, 1), zoom, 2)
    lab = up[: shape[0], : shape[1], : shape[2]].copy()
    noise = rng.random(shape) < 0.1
    lab[noise] = rng.integers(1, n_labels + 1, size=int(noise.sum()))
    lab[rng.random(shape) < background] = 0
    return lab


def assert_same_contacts(a, b):
    assert a.dtype == b.dtype == CONTACT_DTYPE
    assert len(a) == len(b)
    for f in CONTACT_DTYPE.names:
        np.testing.assert_array_equal(a[f], b[f], err_msg=f)


# ---------------------------------------------------------------- hand-made cases


def two_touches():
    """Segments 1 and 2 are slabs in y separated by background except two bridges."""
    seg = np.zeros((3, 8, 12), np.uint64)
    seg[:, :3, :] = 1
    seg[:, 4:, :] = 2
    # bridge A: label 1 fills row y=3 for x in 1..3 (z all) -> interface at y 3|4
    seg[:, 3, 1:4] = 1
    # bridge B: label 2 fills row y=3 for x in 7..8, z 0..1 -> interface at y 2|3
    seg[0:2, 3, 7:9] = 2
    return seg


def test_two_separate_touches_exact_sizes_and_centroids():
    seg = two_touches()
    affs = np.full((3, *seg.shape), 0.25, np.float32)
    c = find_contacts(seg, affs)
    assert len(c) == 2
    c = c[np.argsort(c["size"])]
    # bridge B: 2 (z) x 2 (x) y-edges between y=2 (label 1) and y=3 (label 2)
    assert c["size"][0] == 4
    np.testing.assert_allclose([c["z"][0], c["y"][0], c["x"][0]], [0.5, 2.5, 7.5])
    # bridge A: 3 (z) x 3 (x) y-edges between y=3 (1) and y=4 (2)
    assert c["size"][1] == 9
    np.testing.assert_allclose([c["z"][1], c["y"][1], c["x"][1]], [1.0, 3.5, 2.0])
    assert np.all(c["seg_a"] == 1) and np.all(c["seg_b"] == 2)
    check_against_reference(find_contacts(seg, affs), reference_contacts(seg, affs))


def test_gap_of_one_voxel_gives_two_contacts_and_no_gap_gives_one():
    seg = np.zeros((1, 2, 7), np.uint64)
    seg[0, 0, :] = 1
    seg[0, 1, [0, 1, 2, 4, 5]] = 2  # x=3 is background: a one-voxel gap
    affs = np.ones((3, *seg.shape), np.float32)
    assert len(find_contacts(seg, affs)) == 2
    seg[0, 1, 3] = 2
    c = find_contacts(seg, affs)
    assert len(c) == 1 and c["size"][0] == 6


def test_diagonal_only_touching_is_no_contact():
    seg = np.zeros((3, 3, 3), np.uint64)
    seg[0, 0, 0] = 1
    seg[1, 1, 1] = 2  # corner only
    seg[2, 1, 0] = 3
    seg[1, 2, 0] = 4  # 3 and 4: edge-diagonal only (share an edge, not a face)
    affs = np.ones((3, *seg.shape), np.float32)
    assert len(find_contacts(seg, affs)) == 0
    assert len(find_contacts(seg, affs, block_shape=(1, 1, 1))) == 0


def test_background_never_makes_an_interface():
    seg = np.zeros((2, 4, 4), np.uint64)
    seg[0] = 5
    affs = np.ones((3, *seg.shape), np.float32)
    assert len(find_contacts(seg, affs)) == 0


def test_corner_bend_is_one_contact():
    # label 1 is an L around a voxel of label 2: x-edge and z-edge share voxel (0,0,0)
    seg = np.zeros((2, 1, 2), np.uint64)
    seg[0, 0, 0] = 1
    seg[0, 0, 1] = 2
    seg[1, 0, 0] = 2
    seg[1, 0, 1] = 2
    affs = np.ones((3, *seg.shape), np.float32)
    c = find_contacts(seg, affs)
    assert len(c) == 1 and c["size"][0] == 2
    np.testing.assert_allclose([c["z"][0], c["y"][0], c["x"][0]], [0.25, 0.0, 0.25])


def test_scores_are_mean_of_given_affinities():
    seg = two_touches()
    rng = np.random.default_rng(3)
    affs = rng.random((3, *seg.shape)).astype(np.float32)
    c = find_contacts(seg, affs)
    c = c[np.argsort(c["size"])]
    # bridge B edges: y-channel at owner voxels (z in 0..1, y=3, x in 7..8)
    want_b = affs[1, 0:2, 3, 7:9].astype(np.float64).mean()
    want_a = affs[1, :, 4, 1:4].astype(np.float64).mean()
    assert abs(c["score"][0] - want_b) < 1e-9
    assert abs(c["score"][1] - want_a) < 1e-9
    # uint8 affinities mean round(255 a)
    q = np.round(affs * 255).astype(np.uint8)
    cq = find_contacts(seg, q)
    cq = cq[np.argsort(cq["size"])]
    assert abs(cq["score"][0] - q[1, 0:2, 3, 7:9].mean() / 255) < 1e-9
    assert c["aff_sum"][0] == np.sum(np.floor(affs[1, 0:2, 3, 7:9].astype(np.float64) * AFF_SCALE + 0.5))


def test_contact_cut_by_block_boundary_is_one_contact():
    seg = np.zeros((4, 10, 10), np.uint64)
    seg[:, :5, :] = 1
    seg[:, 5:, :] = 2
    seg[:, :, 8:] = 0
    affs = np.random.default_rng(0).random((3, *seg.shape)).astype(np.float32)
    one = find_contacts(seg, affs)
    assert len(one) == 1 and one["size"][0] == 4 * 8
    for bs in [(4, 5, 10), (4, 10, 3), (2, 5, 5), (1, 1, 1), (3, 4, 7)]:
        assert_same_contacts(find_contacts(seg, affs, block_shape=bs), one)


def test_one_voxel_thick_layer_joins_both_sides():
    # 2 is a one-voxel layer between two parts of 1: the y-edges on both sides are one
    # contact (parallel edges offset along their own axis share the layer voxel)
    seg = np.ones((2, 5, 3), np.uint64)
    seg[:, 2, :] = 2
    affs = np.ones((3, *seg.shape), np.float32)
    c = find_contacts(seg, affs)
    assert len(c) == 1 and c["size"][0] == 2 * 2 * 3
    for bs in [(1, 1, 1), (2, 2, 2), (1, 3, 1)]:  # block faces right at the layer
        assert_same_contacts(find_contacts(seg, affs, block_shape=bs), c)


# ---------------------------------------------------------------- blockwise == one block


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    seg = random_labels((4, 7, 8), rng, n_labels=4, zoom=2)
    affs = random_affs(seg.shape, rng)
    check_against_reference(find_contacts(seg, affs), reference_contacts(seg, affs))
    check_against_reference(find_contacts(seg, affs, block_shape=(2, 3, 3)), reference_contacts(seg, affs))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_blockwise_equals_one_block_random(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (9, 21, 23)
    seg = random_labels(shape, rng, n_labels=5, zoom=4)
    affs = random_affs(shape, rng)
    one = find_contacts(seg, affs)
    assert len(one) > 10
    for bs in [(1, 1, 1), (2, 3, 4), (3, 7, 5), (4, 8, 8), (9, 10, 23), (5, 21, 2)]:
        got = find_contacts(seg, affs, block_shape=bs)
        assert_same_contacts(got, one)
    # a wider margin than needed changes nothing
    assert_same_contacts(find_contacts(seg, affs, block_shape=(3, 7, 5), margin=3), one)


def test_contacts_larger_than_blocks_with_many_pieces():
    # long snake-like interfaces spanning many small blocks
    shape = (6, 30, 30)
    seg = np.zeros(shape, np.uint64)
    yy, xx = np.mgrid[:30, :30]
    stripes = ((xx + yy) // 3) % 2 + 1
    seg[:] = stripes
    seg[:, ::7, :] = 0
    affs = random_affs(shape, np.random.default_rng(9))
    one = find_contacts(seg, affs)
    assert one["size"].max() > 50  # each contact spans many (2, 4, 4) blocks
    for bs in [(2, 4, 4), (3, 5, 6), (6, 3, 30)]:
        assert_same_contacts(find_contacts(seg, affs, block_shape=bs), one)


# ---------------------------------------------------------------- block outputs


def test_block_outputs_are_typed_and_ids_deterministic():
    rng = np.random.default_rng(5)
    shape = (6, 12, 12)
    seg = random_labels(shape, rng, n_labels=3, zoom=3)
    affs = random_affs(shape, rng)
    begin, end = (0, 4, 4), (3, 8, 8)
    sl = tuple(slice(max(b - 1, 0), min(e + 1, s)) for b, e, s in zip(begin, end, shape))
    origin = [s.start for s in sl]
    out = block_contacts(seg[sl], affs[(slice(None), *sl)], (begin, end), origin, shape)
    assert out.pieces.dtype == PIECE_DTYPE
    assert out.links.dtype == LINK_DTYPE
    assert out.edge_to_piece.dtype == EDGE_PIECE_DTYPE
    assert np.all(np.diff(out.pieces["piece_id"].astype(np.int64)) > 0)
    # edge ids decode to owner voxels inside the write box (pieces) / outside (links)
    Y, X = shape[1], shape[2]
    for gid in out.pieces["piece_id"]:
        r = int(gid) // 3
        p = np.array([r // (Y * X), (r // X) % Y, r % X])
        assert np.all(p >= begin) and np.all(p < end)
    for gid in out.links["edge_id"]:
        r = int(gid) // 3
        p = np.array([r // (Y * X), (r // X) % Y, r % X])
        assert not (np.all(p >= begin) and np.all(p < end))
    # same block from the whole volume as array (huge margin): identical output
    whole = block_contacts(seg, affs, (begin, end), (0, 0, 0), shape)
    for f in ("pieces", "links", "edge_to_piece"):
        np.testing.assert_array_equal(getattr(whole, f), getattr(out, f))


def test_missing_margin_and_missing_block_raise():
    rng = np.random.default_rng(6)
    shape = (4, 8, 8)
    seg = random_labels(shape, rng, n_labels=2, zoom=2, background=0.0)
    affs = random_affs(shape, rng)
    with pytest.raises(InputError):
        block_contacts(seg[:, 4:, :], affs[:, :, 4:, :], ((0, 4, 0), (4, 8, 8)), (0, 4, 0), shape)
    outs = [
        block_contacts(seg, affs, box, (0, 0, 0), shape) for box in iter_blocks(shape, (4, 4, 8))
    ]
    with pytest.raises(InputError):
        stitch_contacts([outs[0].pieces], [outs[0].links], [outs[0].edge_to_piece])
    # duplicate batches (a block stored twice) are refused too
    with pytest.raises(InputError):
        stitch_contacts(
            [o.pieces for o in outs] * 2, [o.links for o in outs], [o.edge_to_piece for o in outs]
        )


def test_all_edges_counted_once_across_blocks():
    rng = np.random.default_rng(8)
    shape = (5, 9, 11)
    seg = random_labels(shape, rng, n_labels=4, zoom=2)
    affs = random_affs(shape, rng)
    n_iface = 0
    for c in range(3):
        a = seg[tuple(slice(1, None) if i == c else slice(None) for i in range(3))]
        b = seg[tuple(slice(None, -1) if i == c else slice(None) for i in range(3))]
        n_iface += int(np.sum((a != b) & (a != 0) & (b != 0)))
    outs = [
        block_contacts(seg, affs, box, (0, 0, 0), shape) for box in iter_blocks(shape, (2, 4, 3))
    ]
    assert sum(int(o.pieces["size"].sum()) for o in outs) == n_iface
    assert int(find_contacts(seg, affs)["size"].sum()) == n_iface


def test_labels_of_one_segment_connected_is_irrelevant():
    # contacts are about interface edges, not about segment connectivity: a segment
    # split in two components touching the same neighbour twice gives two contacts
    seg = np.zeros((1, 3, 5), np.uint64)
    seg[0, 0, :] = 7
    seg[0, 1, 0] = 3
    seg[0, 1, 4] = 3
    affs = np.ones((3, *seg.shape), np.float32)
    c = find_contacts(seg, affs)
    assert len(c) == 2
    assert ndimage.label(seg == 3)[1] == 2


def test_stitching_sharded_by_pair_equals_stitching_all():
    rng = np.random.default_rng(12)
    shape = (6, 16, 18)
    seg = random_labels(shape, rng, n_labels=8, zoom=3)
    affs = random_affs(shape, rng)
    outs = [
        block_contacts(seg, affs, box, (0, 0, 0), shape) for box in iter_blocks(shape, (3, 5, 4))
    ]
    pieces = np.concatenate([o.pieces for o in outs])
    links = np.concatenate([o.links for o in outs])
    e2p = np.concatenate([o.edge_to_piece for o in outs])
    # the pair recorded on links and face edges is the pair of their piece
    by_id = dict(zip(pieces["piece_id"].tolist(), zip(pieces["seg_a"].tolist(), pieces["seg_b"].tolist())))
    for row in links:
        assert by_id[int(row["piece_id"])] == (int(row["seg_a"]), int(row["seg_b"]))
    for row in e2p:
        assert by_id[int(row["piece_id"])] == (int(row["seg_a"]), int(row["seg_b"]))
    whole = stitch_contacts(pieces, links, e2p)
    n = 3
    parts = []
    for k in range(n):
        parts.append(
            stitch_contacts(
                pieces[pair_shard(pieces["seg_a"], pieces["seg_b"], n) == k],
                links[pair_shard(links["seg_a"], links["seg_b"], n) == k],
                e2p[pair_shard(e2p["seg_a"], e2p["seg_b"], n) == k],
            )
        )
    sharded = np.concatenate(parts)
    sharded = sharded[np.argsort(sharded["contact_id"])]
    assert_same_contacts(sharded, whole)
    assert len({int(x) for x in pair_shard(pieces["seg_a"], pieces["seg_b"], n)}) == n
