"""Oracle recovery: the foreground-restricted Mutex Watershed on ground-truth affinities
plus noise reproduces the ground truth, and degrades smoothly as the noise grows.

(The blockwise pipeline equals the whole-volume MWS exactly — tests/test_pipeline_segment.py
— so recovery is checked on the whole volume here.)"""

import numpy as np
import pytest

from embedseg_daisy.evaluation.metrics import variation_of_information
from embedseg_daisy.mws import mutex_watershed
from embedseg_daisy.mws.synthetic import label_affinities
from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE
from embedseg_daisy.stages.fragments import foreground_from_mask
from embedseg_daisy.synth import generate_volume

OFFSETS = list(PAPER_ATTRACTIVE) + list(PAPER_REPULSIVE)
ATTRACTIVE = [True] * 3 + [False] * 9


@pytest.fixture(scope="module")
def labels():
    return generate_volume((12, 160, 160), 21).labels


def segment(labels, noise, seed=0):
    rng = np.random.default_rng(seed)
    affs = label_affinities(labels, OFFSETS, rng, noise=noise)
    background = (labels == 0).astype(np.float32)
    p_bg = np.clip(background + np.abs(rng.normal(0, noise, labels.shape)) * (1 - 2 * background), 0, 1)
    fg = foreground_from_mask(np.rint(p_bg * 255).astype(np.uint8), 0.6)
    return mutex_watershed(affs, OFFSETS, ATTRACTIVE, fg)


def test_moderate_noise_recovers_ground_truth(labels):
    for noise in (0.0, 0.1, 0.15):
        vi = variation_of_information(labels, segment(labels, noise))
        assert vi.split + vi.merge <= 0.05, (noise, vi)


def test_vi_rises_smoothly_with_noise(labels):
    levels = np.round(np.arange(0.15, 0.301, 0.01), 3)
    vis = np.array([variation_of_information(labels, segment(labels, n)).sum for n in levels])
    steps = np.diff(vis)
    assert vis[-1] > 0.5, "the sweep must reach the regime where MWS fails"
    assert steps.min() >= -0.05, f"VI should not fall as noise grows: {dict(zip(levels, vis.round(3)))}"
    assert steps.max() <= 0.4, f"VI jumps between consecutive noise levels: {dict(zip(levels, vis.round(3)))}"
