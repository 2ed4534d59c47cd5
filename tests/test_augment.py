"""EM augmentations: what changes input vs target, shapes, dtypes, determinism."""

import numpy as np
import pytest

from embedseg_daisy.training.augment import (
    AugmentConfig,
    Patch,
    augment,
    flip_transpose,
    intensity,
    misalignment,
    missing_section,
    out_of_focus,
    slip_interpolation,
)


def _patch(shape=(6, 24, 24), myelin=True, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 2**62, size=shape, dtype=np.uint64)
    # raw is a function of the labels so alignment can be checked after transforms
    raw = ((labels % np.uint64(251)).astype(np.float32) / np.float32(251.0)).astype(np.float32)
    my = (labels % np.uint64(3) == 0) if myelin else None
    return Patch(raw=raw, labels=labels, myelin=my)


def _aligned(p: Patch) -> bool:
    expect = ((p.labels % np.uint64(251)).astype(np.float32) / np.float32(251.0)).astype(np.float32)
    ok = np.array_equal(p.raw, expect)
    if p.myelin is not None:
        ok &= np.array_equal(p.myelin, p.labels % np.uint64(3) == 0)
    return bool(ok)


def _same_meta(a: Patch, b: Patch) -> None:
    assert a.raw.shape == b.raw.shape and a.raw.dtype == b.raw.dtype
    assert a.labels.shape == b.labels.shape and a.labels.dtype == b.labels.dtype
    if a.myelin is not None:
        assert b.myelin.shape == a.myelin.shape and b.myelin.dtype == a.myelin.dtype


def test_slip_changes_input_only():
    p = _patch()
    q = slip_interpolation(p, np.random.default_rng(0), z=3, shift=(2, -1))
    _same_meta(p, q)
    assert np.array_equal(q.labels, p.labels) and np.array_equal(q.myelin, p.myelin)
    assert not np.array_equal(q.raw[3], p.raw[3])
    assert np.array_equal(q.raw[3, 2:, :-1], p.raw[3, :-2, 1:])  # out[y, x] = in[y-2, x+1]
    others = [z for z in range(6) if z != 3]
    assert np.array_equal(q.raw[others], p.raw[others])


def test_missing_section_zeroes_input_only():
    p = _patch()
    q = missing_section(p, np.random.default_rng(0), z=2)
    _same_meta(p, q)
    assert (q.raw[2] == 0).all()
    assert np.array_equal(np.delete(q.raw, 2, 0), np.delete(p.raw, 2, 0))
    assert np.array_equal(q.labels, p.labels) and np.array_equal(q.myelin, p.myelin)


def test_misalignment_shifts_input_and_target():
    p = _patch()
    q = misalignment(p, np.random.default_rng(0), z=4, shift=(-3, 2))
    _same_meta(p, q)
    assert _aligned(q)  # input and target moved together
    assert np.array_equal(q.labels[:4], p.labels[:4])
    assert np.array_equal(q.labels[4:, :-3, 2:], p.labels[4:, 3:, :-2])
    assert not np.array_equal(q.labels[4:], p.labels[4:])


@pytest.mark.parametrize("fy,fx,tr", [(True, False, False), (False, True, True), (True, True, True)])
def test_flips_and_transposes_keep_alignment(fy, fx, tr):
    p = _patch()
    q = flip_transpose(p, np.random.default_rng(0), flip_y=fy, flip_x=fx, transpose=tr)
    _same_meta(p, q)
    assert _aligned(q)
    ref = p.labels
    if fy:
        ref = ref[:, ::-1]
    if fx:
        ref = ref[:, :, ::-1]
    if tr:
        ref = ref.transpose(0, 2, 1)
    assert np.array_equal(q.labels, ref)


def test_transpose_skipped_for_non_square():
    p = _patch(shape=(2, 8, 12))
    q = flip_transpose(p, np.random.default_rng(0), flip_y=False, flip_x=False, transpose=True)
    assert np.array_equal(q.labels, p.labels)


def test_intensity_and_blur_change_input_only():
    p = _patch()
    rng = np.random.default_rng(3)
    q = intensity(p, rng, brightness=0.2, contrast=0.2, gamma=0.5)
    _same_meta(p, q)
    assert np.array_equal(q.labels, p.labels) and not np.array_equal(q.raw, p.raw)
    assert q.raw.min() >= 0 and q.raw.max() <= 1
    r = out_of_focus(p, rng, z=[1, 4], partial=False)
    _same_meta(p, r)
    assert np.array_equal(r.labels, p.labels)
    assert not np.array_equal(r.raw[1], p.raw[1]) and np.array_equal(r.raw[0], p.raw[0])
    assert r.raw[1].std() < p.raw[1].std()
    s = out_of_focus(p, np.random.default_rng(5), z=2, partial=True)
    changed = s.raw[2] != p.raw[2]
    assert changed.any() and not changed.all()  # one side of a line only


def test_inputs_are_not_modified():
    p = _patch()
    raw, lab = p.raw.copy(), p.labels.copy()
    rng = np.random.default_rng(0)
    for f in (flip_transpose, misalignment, slip_interpolation, intensity, missing_section, out_of_focus):
        f(p, rng)
    assert np.array_equal(p.raw, raw) and np.array_equal(p.labels, lab)


def test_augment_deterministic_and_preserves_shapes():
    cfg = AugmentConfig(
        intensity_prob=1, missing_prob=1, blur_prob=1, misalign_prob=1, slip_prob=1,
        misalign_max_shift=3, slip_max_shift=3,
    )
    p = _patch()
    a = augment(p, np.random.default_rng(42), cfg)
    b = augment(p, np.random.default_rng(42), cfg)
    c = augment(p, np.random.default_rng(43), cfg)
    _same_meta(p, a)
    assert np.array_equal(a.raw, b.raw) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.myelin, b.myelin)
    assert not np.array_equal(a.raw, c.raw)
    assert cfg.margin() == 3
    assert AugmentConfig(enabled=False).margin() == 0
    assert augment(p, np.random.default_rng(0), AugmentConfig(enabled=False)) is p


def test_patch_without_myelin():
    p = _patch(myelin=False)
    q = misalignment(p, np.random.default_rng(0), z=1, shift=(1, 1))
    assert q.myelin is None
