"""The statistics behind issue 4's acceptance figures (``benchmarks/embedding_quality.py``).

A hand-made patch whose embeddings are known: the figures the benchmark reports for it
must be the ones computed by hand, or the shipped checkpoint's figures mean nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "embedding_quality.py"


@pytest.fixture(scope="module")
def eq():
    spec = importlib.util.spec_from_file_location("embedding_quality", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scene():
    """Three objects in a 4×40×40 patch, split by 2-voxel membranes (label 0):
    object 1 (x < 18), object 2 (x > 19, y < 18) and object 3 (x > 19, y > 19).
    Object 3 also has a second piece cut off by a membrane at x = 30..31, and a 3×3
    sliver of object 4 sits inside object 2 (too small to count)."""
    labels = np.zeros((4, 40, 40), np.uint64)
    labels[:, :, :18] = 1
    labels[:, :18, 20:] = 2
    labels[:, 20:, 20:30] = 3
    labels[:, 20:, 32:] = 3
    labels[:, 2:5, 30:33] = 4
    return labels


def test_distances_match_hand_computed_values(eq):
    labels = _scene()
    codes = {1: np.zeros(24), 2: np.full(24, 0.25), 3: np.r_[np.full(12, -0.05), np.zeros(12)], 4: np.ones(24)}
    emb = np.zeros((24, *labels.shape), np.float32)
    for obj, code in codes.items():
        emb[:, labels == obj] = code[:, None]
    # object 1: half its voxels +0.5 in channel 0, half -0.5 -> mean unchanged, spread 0.5
    emb[0, :, :, :9] += 0.5
    emb[0, :, :, 9:18] -= 0.5
    stats = eq.patch_stats(emb, labels, near=4.0)
    assert sorted(stats["spreads"]) == pytest.approx([0.0, 0.0, 0.0, 0.5], abs=1e-4)  # the 4-piece is < 50 voxels
    # touching pairs of different objects: 1-2 (6.0), 1-3 (0.6, the left piece of 3), 2-3 twice
    # (both pieces of 3, 6.6 each); the two pieces of 3 are "same object" pairs (0.0)
    assert sorted(stats["between"]) == pytest.approx([0.6, 6.0, 6.6, 6.6], abs=1e-4)
    assert stats["same"] == pytest.approx([0.0], abs=1e-4)
    # near the contacts (x = 16, 17) object 1's channel 0 is -0.5, so against 2 (+0.25):
    # 6.0 + 0.5; against 3 (-0.05): 0.6 - 0.05 + 0.45
    assert sorted(stats["local"]) == pytest.approx([1.0, 6.5, 6.6, 6.6], abs=1e-4)
    # smaller piece of each pair: 2 (minus the sliver) vs 1, then 3's left piece twice, its right piece
    assert sorted(stats["smaller"]) == [4 * 20 * 8, 4 * 20 * 10, 4 * 20 * 10, 4 * 18 * 20 - 36]


def test_near_contact_means_only_see_the_boundary(eq):
    """Embeddings that drift away from the contact: whole-piece means are far apart, the
    near-contact ones are not, which is what the diagnostic is for."""
    labels = np.zeros((2, 20, 60), np.uint64)
    labels[:, :, :29] = 1
    labels[:, :, 31:] = 2
    emb = np.zeros((24, *labels.shape), np.float32)
    x = np.arange(60, dtype=np.float32)
    emb[0] = np.where(labels == 1, (29 - x) * 0.2, 0)  # object 1: 0 at the membrane, 5.8 far away
    emb[1] = np.where(labels == 2, (x - 30) * 0.2, 0)
    stats = eq.patch_stats(emb, labels, near=4.0)
    assert len(stats["between"]) == 1
    assert stats["between"][0] == pytest.approx(0.2 * (np.arange(1, 30).mean() + np.arange(1, 30).mean()), rel=1e-5)
    # within 4 voxels of the other piece: x = 27, 28 (object 1) and 31, 32 (object 2)
    assert stats["local"][0] == pytest.approx(0.2 * (1.5 + 1.5), rel=1e-5)


def test_summary_fractions(eq):
    stats = [
        dict(spreads=[0.5, 2.0], between=[1.0, 4.0, 3.5], smaller=[60, 600, 20000], local=[1.0, np.nan, 5.0], same=[]),
        dict(spreads=[1.0], between=[2.9], smaller=[3000], local=[2.0], same=[0.1]),
    ]
    s = eq.summarise(stats, [1.0, 0.5], [0.5, 0.5], near=8.0)
    assert s["objects"] == 3 and s["touching_pairs"] == 4
    assert s["fraction_objects_within_below_delta"] == pytest.approx(2 / 3)
    assert s["fraction_pairs_between_above_2delta"] == pytest.approx(0.5)
    assert s["fraction_pairs_between_below_delta"] == pytest.approx(0.25)
    assert s["near_contact_pairs"] == 3 and s["near_contact_fraction_above_2delta"] == pytest.approx(1 / 3)
    bins = s["fraction_pairs_between_above_2delta_by_smaller_piece_vox"]
    assert bins["50-500"] == {"pairs": 1, "fraction_above_2delta": 0.0}
    assert bins["500-2000"] == {"pairs": 1, "fraction_above_2delta": 1.0}
    assert bins["2000-10000"] == {"pairs": 1, "fraction_above_2delta": 0.0}
    assert bins["10000-inf"] == {"pairs": 1, "fraction_above_2delta": 1.0}
    assert s["mask_f1_vs_training_target"] == pytest.approx(0.75)


def test_volumes_are_pooled_and_each_reported(eq, monkeypatch):
    """The headline pools every volume's pairs; each volume's figures are its own (they
    do not change with the other volumes measured)."""
    reports = []
    monkeypatch.setattr(eq, "save", lambda name, report, headline, out=None: reports.append(report))
    small = ["--patches", "2", "--shape", "20", "160", "160"]
    assert eq.main(["--seeds", "3001", "3002", *small]) == 0
    assert eq.main(["--seeds", "3002", *small]) == 0
    both, alone = (next(iter(r["checkpoints"].values())) for r in reports)
    per = both["per_volume"]
    assert list(per) == ["3001", "3002"] and reports[0]["seeds"] == [3001, 3002]
    pairs = [v["touching_pairs"] for v in per.values()]
    assert min(pairs) > 0 and both["touching_pairs"] == sum(pairs)
    assert both["objects"] == sum(v["objects"] for v in per.values())
    frac = "fraction_pairs_between_above_2delta"
    assert both[frac] == pytest.approx(sum(v[frac] * v["touching_pairs"] for v in per.values()) / sum(pairs))
    assert both["volumes_with_most_touching_pairs_above_2delta"] == sum(v[frac] > 0.5 for v in per.values())
    assert alone["per_volume"]["3002"] == per["3002"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "3001", "5"], "seeds [5]: seeds 1-9 made the training"),
        (["--seeds", "3001", "3001"], "a volume given twice"),
        (["--patches", "0"], "--patches must be"),
        (["--shape", "40", "100", "384"], "--shape [40, 100, 384] is smaller than the net's input patch [20, 128, 128]"),
    ],
)
def test_refuses_bad_volume_requests(eq, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        eq.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_loss_at_scaled_embeddings_matches_hand_computed_values():
    """``embedding_loss_scale.py``: Eqs. 1-4 of ``emb * s`` on a patch with two objects, one
    of them cut in two by a membrane (its two parts must not push each other apart)."""
    spec = importlib.util.spec_from_file_location("embedding_loss_scale", _PATH.parent / "embedding_loss_scale.py")
    els = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(els)
    target = np.zeros((2, 20, 40), np.int64)
    target[:, :, :18] = 1
    target[:, :, 20:29] = 2
    target[:, :, 31:] = 2  # object 2 in two parts, with codes 2 apart in L1
    emb = torch.zeros((24, *target.shape))
    emb[0, :, :, :9] += 0.5  # object 1: spread 0.5 (mean 0)
    emb[0, :, :, 9:18] -= 0.5
    emb[1, :, :, 20:29] = 2.0  # part a of object 2: 2 from object 1
    emb[1:3, :, :, 31:] = 1.0  # part b: 2 from object 1 and 2 from part a
    rows = els.scaled_losses(emb, target, [1.0, 2.0])
    # C = 3 parts; L_int = (0.5 s)^2 / 3; L_ext over ordered pairs 1-a, 1-b (a-b dropped):
    # 4 * max(3 - 2 s, 0)^2 / 6; L_reg = (0 + 2 s + 2 s) / 3
    for s, (total, l_int, l_ext, l_reg) in zip([1.0, 2.0], rows):
        assert l_int == pytest.approx(0.25 * s * s / 3)
        assert l_ext == pytest.approx(4 * max(3 - 2 * s, 0) ** 2 / 6)
        assert l_reg == pytest.approx(4 * s / 3)
        assert total == pytest.approx(l_int + l_ext + 0.001 * l_reg)
