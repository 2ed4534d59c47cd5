"""Candidates find real self-touch splits (section 2.3 heuristic, issue acceptance).

Every self-touching object of a synthetic ground truth is split at its self-contact the
way a greedy clustering fails; contacts are computed as the pipeline does (direct
contacts plus contacts across thin membranes, which score 0) and the detector must
recover the planted splits while flagging no pair of distinct objects on oracle
affinities.
"""

import numpy as np
import pytest

from embedseg_daisy.contacts import find_contacts
from embedseg_daisy.self_touch_eval import evaluate_detection, nn_affinities_from_labels, plant_self_touch_splits
from embedseg_daisy.synth import generate_volume


@pytest.fixture(scope="module")
def volumes():
    return [generate_volume((32, 256, 256), seed) for seed in (11, 12)]


def test_planted_self_touch_splits_are_recovered(volumes):
    planted = recovered = false_pairs = 0
    for vol in volumes:
        result = evaluate_detection(vol.labels, vol.self_touches, theta=0.25)
        assert not result.skipped, result.skipped
        planted += result.planted
        recovered += result.recovered
        false_pairs += result.false_pairs
    assert planted >= 4
    assert recovered / planted >= 0.9
    assert false_pairs == 0


def test_planted_split_has_two_contacts_one_of_them_strong(volumes):
    vol = volumes[0]
    split, planted, _ = plant_self_touch_splits(vol.labels, vol.self_touches)
    truth = split.copy()
    for old, new in planted:
        truth[truth == new] = old
    contacts = find_contacts(split, nn_affinities_from_labels(truth), gap=2)
    for old, new in planted:
        mine = contacts[(contacts["seg_a"] == min(old, new)) & (contacts["seg_b"] == max(old, new))]
        assert len(mine) >= 2
        assert mine["score"].max() > 0.9  # the false split: uniform affinities across it
        assert mine["score"].min() == 0.0  # the self-contact, across the membrane


def test_gap_contacts_blockwise_equal_one_block(volumes):
    vol = volumes[1]
    seg = vol.labels[:16, :128, :128]
    affs = nn_affinities_from_labels(seg, np.random.default_rng(0), 0.2)
    whole = find_contacts(seg, affs, gap=2)
    for block in [(8, 64, 64), (5, 40, 33)]:
        blocks = find_contacts(seg, affs, block_shape=block, gap=2)
        assert np.array_equal(np.sort(whole, order="contact_id"), np.sort(blocks, order="contact_id"))
