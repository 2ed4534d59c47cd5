"""Block grids, block keys, fragment-id geometry and fragment-edge aggregation."""

import numpy as np
import pytest
from funlib.geometry import Roi

from embedseg_daisy.fragment_graph import EdgeTable, map_ids, representatives, typed_edges
from embedseg_daisy.fragments import fragment_table, global_fragment_ids
from embedseg_daisy.geometry import (
    block_index,
    block_key,
    block_roi,
    fragment_block_index,
    grid_shape,
    parse_block_key,
    raster_index,
    unravel_raster,
)
from embedseg_daisy.stages.relabel import merge_map


def test_block_index_from_write_roi_not_block_id():
    vol = Roi((4, 10, 20), (20, 100, 100))
    assert grid_shape(vol.shape, (8, 32, 32)) == (3, 4, 4)
    roi = block_roi((2, 3, 1), vol, (8, 32, 32))
    assert roi == Roi((20, 106, 52), (4, 4, 32))  # last blocks are cropped
    assert block_index(roi, vol, (8, 32, 32)) == (2, 3, 1)
    assert parse_block_key(block_key((2, 3, 1))) == (2, 3, 1)
    with pytest.raises(ValueError):
        block_index(Roi((5, 10, 20), (8, 32, 32)), vol, (8, 32, 32))


def test_raster_index_round_trip_and_fragment_blocks():
    shape = (7, 11, 13)
    coords = np.array([[0, 0, 0], [6, 10, 12], [3, 4, 5]])
    idx = raster_index(coords, shape)
    assert idx.tolist() == [0, 7 * 11 * 13 - 1, (3 * 11 + 4) * 13 + 5]
    assert np.array_equal(unravel_raster(idx, shape), coords)
    assert fragment_block_index(idx + 1, shape, (4, 4, 4)).tolist() == [[0, 0, 0], [1, 2, 3], [0, 1, 1]]


def test_global_fragment_ids_are_first_voxel_raster_indices():
    local = np.zeros((2, 3, 4), np.uint64)
    local[0, 1, 2:] = 5
    local[1, 0, 0] = 9
    local[1, 2, 3] = 5
    ids, labels, gids = global_fragment_ids(local, (10, 0, 0), (20, 3, 4))
    first_5 = raster_index(np.array([[10, 1, 2]]), (20, 3, 4))[0] + 1
    first_9 = raster_index(np.array([[11, 0, 0]]), (20, 3, 4))[0] + 1
    assert ids[0, 1, 2] == first_5 and ids[1, 2, 3] == first_5 and ids[1, 0, 0] == first_9
    assert ids[0, 0, 0] == 0
    table = fragment_table(ids, (10, 0, 0))
    assert table.ids.tolist() == sorted([first_5, first_9])
    row = table.ids.tolist().index(first_5)
    assert table.sizes[row] == 3
    assert np.allclose(table.centroids[row], [(10 + 10 + 11) / 3, (1 + 1 + 2) / 3, (2 + 3 + 3) / 3])
    assert table.bboxes[row].tolist() == [10, 1, 2, 12, 3, 4]


def test_edge_aggregation_keeps_max_keys_and_sums():
    t = EdgeTable.from_columns(
        {
            "u": [5, 3, 3, 4, 7],
            "v": [3, 5, 5, 4, 1],
            "attr_key": [10, 12, -1, 9, 1],
            "rep_key": [-1, 4, 8, 3, -1],
            "aff_sum": [0.5, 0.25, 0.0, 1.0, 0.5],
            "aff_count": [1, 1, 0, 1, 1],
        }
    )
    agg = t.aggregate()
    assert agg.u.tolist() == [1, 3] and agg.v.tolist() == [7, 5]  # self-edge 4-4 dropped
    assert agg.attr_key.tolist() == [1, 12] and agg.rep_key.tolist() == [-1, 8]
    assert agg.aff_sum.tolist() == [0.5, 0.75] and agg.aff_count.tolist() == [1, 2]
    u, v, keys, att = typed_edges(agg)
    assert sorted(zip(u.tolist(), v.tolist(), keys.tolist(), att.tolist())) == [
        (1, 7, 1, True), (3, 5, 8, False), (3, 5, 12, True)
    ]
    moved = agg.relabel({7: 3, 5: 1})
    assert moved.u.tolist() == [1] and moved.v.tolist() == [3]


def test_map_ids_and_representatives():
    assert map_ids(np.array([1, 2, 3, 9]), np.array([3, 1]), np.array([30, 10])).tolist() == [10, 2, 30, 9]
    reps = representatives(np.array([40, 7, 12, 3]), np.array([0, 1, 0, 1]))
    assert reps.tolist() == [12, 3, 12, 3]


def test_merge_map_components():
    keys, values = merge_map(np.array([5, 9, 20]), np.array([9, 11, 21]))
    assert dict(zip(keys.tolist(), values.tolist())) == {5: 5, 9: 5, 11: 5, 20: 20, 21: 20}
