"""The segmentation stages through daisy and the store, on oracle affinities.

fragments -> fragment_edges -> agglomerate (hierarchical) -> relabel must reproduce the
whole-volume Mutex Watershed *exactly* for any block size (segment ids are the raster
index of a cluster's first voxel, so even the ids agree), and a block re-run after a
simulated crash must leave every output and every store row unchanged.
"""

import numpy as np
import pytest

from embedseg_daisy.config import load_config, results_hash
from embedseg_daisy.evaluation.metrics import variation_of_information
from embedseg_daisy.mws import blockwise_mutex_watershed, mutex_watershed
from embedseg_daisy.pipeline.driver import execute
from embedseg_daisy.stages.fragments import foreground_from_mask
from embedseg_daisy.store import open_store
from embedseg_daisy.volumes import claim_output, open_volume

from pipeline_helpers import OFFSETS, make_input, oracle_outputs, segment_config, write_config

SHAPE = (12, 96, 96)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segment")
    labels = make_input(tmp / "input.zarr", SHAPE, seed=3)
    return tmp, labels


def run_oracle(tmp, labels, name, block, *, fanout=(2, 2, 2), noise=0.1, exact_region_vox=2**24, tiles=None):
    data = segment_config(
        tmp, name, block, agglomerate__fanout=list(fanout), agglomerate__exact_region_vox=exact_region_vox,
        agglomerate__last_level_tile_blocks=tiles,
    )
    path = write_config(tmp / f"{name}.json", data)
    cfg = load_config(path)
    claim_output(cfg.output.container, cfg.name, results_hash(cfg))
    oracle_outputs(tmp / f"{name}.zarr", labels, noise=noise, block=block)
    outcome = execute(str(path), cfg, progress=False)
    assert outcome.ok, outcome.messages
    return cfg, path


def read(cfg, name):
    vol = open_volume(cfg.output.container, name)
    return vol.read(vol.roi)


@pytest.fixture(scope="module")
def runs(volume):
    tmp, labels = volume
    return {
        "one": run_oracle(tmp, labels, "one", SHAPE),
        "small": run_oracle(tmp, labels, "small", (4, 32, 32)),
        "odd": run_oracle(tmp, labels, "odd", (5, 40, 28), fanout=(2, 3, 2)),
        # every level below the top decides locally (any region holds > 0 voxels)
        "local": run_oracle(tmp, labels, "local", (4, 32, 32), exact_region_vox=0),
        # the same with the last level split into tiles: one tile covering the 3x3x3
        # blocks, and one tile per block
        "one_tile": run_oracle(tmp, labels, "one_tile", (4, 32, 32), exact_region_vox=0, tiles=[3, 3, 3]),
        "tiles": run_oracle(tmp, labels, "tiles", (4, 32, 32), exact_region_vox=0, tiles=[1, 1, 1]),
    }


def test_blockwise_equals_whole_volume_mws(volume, runs):
    tmp, labels = volume
    cfg, _ = runs["one"]
    affs = read(cfg, "affinities")
    fg = foreground_from_mask(read(cfg, "mask"), cfg.segment.theta_mask)
    attractive = [True] * 3 + [False] * 9
    expected = mutex_watershed(affs, OFFSETS, attractive, fg)
    for key in ("one", "small", "odd"):
        seg = read(runs[key][0], "segmentation")
        assert np.array_equal(seg, expected), f"{key}: blockwise segmentation differs from the whole-volume MWS"


def test_local_levels_match_the_in_memory_reference(volume, runs):
    """Above ``exact_region_vox`` the hierarchy decides locally: the pipeline (daisy,
    store, lookups) must give exactly what the in-memory driver gives with the same
    rule, and on oracle affinities that stays within a hair of the exact result."""
    cfg, _ = runs["local"]
    affs = read(cfg, "affinities")
    fg = foreground_from_mask(read(cfg, "mask"), cfg.segment.theta_mask)
    attractive = [True] * 3 + [False] * 9
    ref = blockwise_mutex_watershed(
        affs, OFFSETS, attractive, fg, block_shape=(4, 32, 32), context=tuple(cfg.segment.context_vox),
        exact_region_vox=0,
    )
    seg = read(cfg, "segmentation")
    assert np.array_equal(seg, ref.labels)
    exact = read(runs["small"][0], "segmentation")
    vi = variation_of_information(exact, seg, ignore_gt=())
    assert vi.split + vi.merge <= 0.01, vi


def test_tiled_last_level(volume, runs):
    """A tiled last level: one tile over the whole volume reproduces the untiled last
    level voxel for voxel (every crossing edge owned by exactly one tile, the passed-up
    edges found by node); one tile per block stays close to it on oracle affinities, and
    its lookups come from the components step, not from a whole-volume graph."""
    local = read(runs["local"][0], "segmentation")
    assert np.array_equal(read(runs["one_tile"][0], "segmentation"), local)
    cfg, _ = runs["tiles"]
    seg = read(cfg, "segmentation")
    vi = variation_of_information(local, seg, ignore_gt=())
    assert vi.split + vi.merge <= 0.01, vi
    store = open_store(cfg)
    stages = {r["stage"]: r for r in store.find("stages")}
    assert stages["agglomerate_L2_tiles"]["total_blocks"] == 27
    assert stages["agglomerate_L2"]["total_blocks"] == 1
    merges = store.find_columns("tile_merges", {"graph": "mws", "level": 2}, fields=["region"])
    assert len(set(merges["region"])) > 1  # merges really come from several tiles
    assert len(np.unique(seg)) < len(np.unique(read(cfg, "fragments")))


def test_tiled_last_level_rerun_changes_nothing(volume, runs):
    cfg, path = runs["tiles"]
    store = open_store(cfg)
    before = {c: store.count(c) for c in ("lookups", "tile_merges", "level_edges")}
    lookups = store.find_arrays("lookups", {"graph": "mws", "level": 2}, fields=["node", "parent"])
    seg_before = read(cfg, "segmentation")
    reset = {"agglomerate_L2_tiles": ["0_0_0", "1_1_1", "2_2_2"], "agglomerate_L2": ["0_0_0"], "relabel": ["1_1_1"]}

    def started():
        return {(s, b): r["started"] for s, keys in reset.items() for b in keys
                for r in store.find("blocks", {"stage": s, "block": b}, fields=["started"])}

    started_before = started()
    assert len(started_before) == 5
    for stage, keys in reset.items():
        store.reset_blocks(stage, keys)
    outcome = execute(str(path), cfg, progress=False)
    assert outcome.ok, outcome.messages
    # the forgotten blocks really ran again (and only wrote what they had written)
    started_after = started()
    assert set(started_after) == set(started_before)
    assert all(started_after[k] > started_before[k] for k in started_before), (started_before, started_after)
    assert {c: store.count(c) for c in before} == before
    after = store.find_arrays("lookups", {"graph": "mws", "level": 2}, fields=["node", "parent"])
    assert sorted(zip(after["node"], after["parent"])) == sorted(zip(lookups["node"], lookups["parent"]))
    assert np.array_equal(read(cfg, "segmentation"), seg_before)


def test_local_levels_pass_up_only_open_clusters(volume, runs):
    """The memory bound: under the local rule a region passes up only clusters with an
    attractive edge leaving it, far fewer than the exact rule's frozen clusters."""
    counts = {}
    for key in ("small", "local"):
        store = open_store(runs[key][0])
        counts[key] = store.count("level_edges")
    assert counts["local"] * 5 < counts["small"], counts


def test_small_blocks_really_split_objects(volume, runs):
    """The invariance test means something only if objects cross block boundaries."""
    cfg, _ = runs["small"]
    frags = read(cfg, "fragments")
    seg = read(cfg, "segmentation")
    assert len(np.unique(frags)) > len(np.unique(seg)) + 20
    store = open_store(cfg)
    levels = {r["stage"] for r in store.find("stages")}
    assert {"agglomerate_L1", "agglomerate_L2"} <= levels


def test_oracle_segmentation_matches_ground_truth(volume, runs):
    tmp, labels = volume
    seg = read(runs["small"][0], "segmentation")
    vi = variation_of_information(labels, seg)
    assert vi.split + vi.merge <= 0.05, vi


def test_rerun_after_crash_changes_nothing(volume, runs):
    cfg, path = runs["small"]
    store = open_store(cfg)
    before = {c: store.count(c) for c in ("fragments", "fragment_edges", "lookups", "level_edges", "fragment_segments")}
    seg_before = read(cfg, "segmentation")
    frag_before = read(cfg, "fragments")
    # a crash after writing but before marking done: forget some done marks
    store.reset_blocks("fragments", ["0_0_0", "1_1_0", "2_2_2"])
    store.reset_blocks("fragment_edges", ["0_1_1"])
    store.reset_blocks("agglomerate_L1", ["0_0_0"])
    store.reset_blocks("agglomerate_L2", ["0_0_0"])
    store.reset_blocks("relabel", ["1_0_1"])
    outcome = execute(str(path), cfg, progress=False)
    assert outcome.ok, outcome.messages
    after = {c: store.count(c) for c in before}
    assert after == before
    assert np.array_equal(read(cfg, "fragments"), frag_before)
    assert np.array_equal(read(cfg, "segmentation"), seg_before)
    done = store.done_blocks("fragments")
    assert {"0_0_0", "1_1_0", "2_2_2"} <= done
