"""The candidates stage through daisy and the store: the minimum segment size.

A Mutex Watershed on noisy affinities leaves many tiny segments along membranes; one
wedged between two contacts of a neighbour makes that pair a self-touch "candidate" that
would cost MEA a network forward.  The stage must drop candidates with a segment below
``contacts.min_segment_size_vox`` (sizes from the store), and keep every other one.
"""

import numpy as np
import pytest

from embedseg_daisy.config import load_config, results_hash
from embedseg_daisy.pipeline.driver import execute
from embedseg_daisy.stages.candidates import segment_sizes
from embedseg_daisy.store import open_store
from embedseg_daisy.volumes import claim_output, open_volume

from pipeline_helpers import make_input, oracle_outputs, segment_config, write_config

SHAPE = (12, 96, 96)
STAGES = ["fragments", "fragment_edges", "agglomerate", "relabel", "contacts", "candidates"]


def run(tmp, labels, name, min_size):
    data = segment_config(tmp, name, (6, 48, 48), stages=STAGES, contacts__min_segment_size_vox=min_size)
    path = write_config(tmp / f"{name}.json", data)
    cfg = load_config(path)
    claim_output(cfg.output.container, cfg.name, results_hash(cfg))
    # strong noise: an over-segmentation with small segments, as a weak net gives
    oracle_outputs(tmp / f"{name}.zarr", labels, noise=0.35, block=(6, 48, 48))
    outcome = execute(str(path), cfg, progress=False)
    assert outcome.ok, outcome.messages
    store = open_store(cfg)
    pairs = {(r["s1"], r["s2"]) for r in store.find("candidates", {"segmentation": "segmentation"})}
    vol = open_volume(cfg.output.container, "segmentation")
    return cfg, store, pairs, vol.read(vol.roi)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cands")
    labels = make_input(tmp / "input.zarr", SHAPE, seed=5)
    return run(tmp, labels, "all", 0), run(tmp, labels, "big", 150)


def test_segment_sizes_from_store_match_the_segmentation(runs):
    _, store, _, seg = runs[0]
    ids, counts = np.unique(seg[seg > 0], return_counts=True)
    sizes = segment_sizes(store, "mws", ids, chunk=7)  # tiny chunks: the batching is exercised
    assert sizes == dict(zip(ids.tolist(), counts.tolist()))


def test_candidates_with_small_segments_are_dropped(runs):
    (_, _, all_pairs, seg), (_, _, big_pairs, seg2) = runs
    assert np.array_equal(seg, seg2)  # the size filter changes candidates only
    ids, counts = np.unique(seg, return_counts=True)
    size = dict(zip(ids.tolist(), counts.tolist()))
    expected = {p for p in all_pairs if min(size[p[0]], size[p[1]]) >= 150}
    assert any(min(size[a], size[b]) < 150 for a, b in all_pairs), "the volume should produce small-segment candidates"
    assert big_pairs == expected
