"""Tests for the synthetic serial-section EM generator (embedseg_daisy.synth).

Small volumes only (24 x 128 x 128); the whole file runs in well under a minute.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from embedseg_daisy.synth import SynthVolume, generate_volume, read_volume, write_volume
from embedseg_daisy.synth.__main__ import main as synth_main

SHAPE = (24, 128, 128)
SEED = 0


@pytest.fixture(scope="module")
def vol() -> SynthVolume:
    return generate_volume(SHAPE, SEED)


@pytest.fixture(scope="module")
def vol_steps() -> SynthVolume:
    return generate_volume(SHAPE, SEED, steps=2)


# ----------------------------------------------------------------- helpers


def n_components_per_id(labels: np.ndarray) -> dict[int, int]:
    """Number of 6-connected components of every id (scipy, independent of the
    generator's own union-find)."""
    out = {}
    six = ndimage.generate_binary_structure(3, 1)
    for i, sl in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
        if sl is None:
            continue
        _, n = ndimage.label(labels[sl] == i, structure=six)
        out[i] = n
    return out


def touches_itself(labels: np.ndarray, obj: int, contact, half=(1, 8, 8), max_gap=2) -> bool:
    """Within a window around ``contact``, ``obj`` has two distinct 6-connected
    pieces that face each other across only label-0 voxels (at most ``max_gap``)."""
    sl = tuple(slice(max(c - h, 0), c + h + 1) for c, h in zip(contact, half))
    win = labels[sl]
    comp, n = ndimage.label(win == obj)
    if n < 2:
        return False
    for axis in range(3):
        L = win.shape[axis]
        for k in range(2, max_gap + 2):
            if k >= L:
                break
            a = np.take(comp, range(0, L - k), axis=axis)
            b = np.take(comp, range(k, L), axis=axis)
            ok = (a > 0) & (b > 0) & (a != b)
            for j in range(1, k):
                ok &= np.take(win, range(j, L - k + j), axis=axis) == 0
            if ok.any():
                return True
    return False


# ----------------------------------------------------------------- basics


def test_dtypes_shapes_and_meta(vol):
    assert vol.raw.shape == SHAPE and vol.labels.shape == SHAPE
    assert vol.raw.dtype == np.uint8
    assert vol.labels.dtype == np.uint64
    assert int(vol.labels.max()) < 2**63
    for key in ("seed", "shape", "missing_sections", "slips", "steps"):
        assert key in vol.meta
    assert vol.meta["seed"] == SEED
    assert vol.meta["shape"] == list(SHAPE)
    assert vol.meta["missing_sections"] == [] and vol.meta["slips"] == [] and vol.meta["steps"] == []
    # ids are 1..N, and there are plenty of objects but not absurdly many
    ids = np.unique(vol.labels)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))
    assert 20 <= len(ids) - 1 <= 400
    # mostly objects, with a membrane network of a realistic share
    zero = float((vol.labels == 0).mean())
    assert 0.05 < zero < 0.35
    json.dumps(vol.meta)
    json.dumps(vol.self_touches)


def test_deterministic_per_seed(vol):
    again = generate_volume(SHAPE, SEED)
    assert np.array_equal(again.raw, vol.raw)
    assert np.array_equal(again.labels, vol.labels)
    assert again.self_touches == vol.self_touches
    assert again.meta == vol.meta
    other = generate_volume(SHAPE, SEED + 1)
    assert not np.array_equal(other.raw, vol.raw)
    assert not np.array_equal(other.labels, vol.labels)


def test_does_not_touch_global_rng(vol):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    generate_volume((8, 64, 64), 5)
    assert np.array_equal(np.random.get_state()[1], before)


# ----------------------------------------------------------------- ground truth


def test_every_object_is_one_6_connected_component(vol, vol_steps):
    for v in (vol, vol_steps):
        counts = n_components_per_id(v.labels)
        bad = {i: n for i, n in counts.items() if n != 1}
        assert not bad, f"ids with several 6-connected pieces: {bad}"


def test_membranes_are_dark_and_on_the_boundaries(vol):
    raw = vol.raw.astype(np.float64)
    boundary = vol.labels == 0
    inside = ndimage.binary_erosion(~boundary, structure=np.ones((1, 5, 5), bool))
    # label-0 voxels are clearly darker than cytoplasm away from membranes
    assert raw[boundary].mean() < raw[inside].mean() - 40
    # and there is realistic noise in the cytoplasm
    assert raw[inside].std() > 8
    # in-plane boundaries are thin: almost every label-0 voxel has a foreground
    # voxel within 2 pixels in the same section
    near = ndimage.binary_dilation(~boundary, structure=np.ones((1, 5, 5), bool))
    assert (boundary & ~near).sum() < 0.01 * boundary.sum()


def test_self_touches_really_touch(vol):
    touches = vol.self_touches
    kinds = {t["kind"] for t in touches}
    assert kinds == {"u_turn", "spine"}, touches
    for t in touches:
        assert set(t) == {"id", "kind", "contact_zyx"}
        z, y, x = t["contact_zyx"]
        assert vol.labels[z, y, x] == 0, "the contact voxel lies on the membrane"
        assert touches_itself(vol.labels, t["id"], (z, y, x)), t


def test_calibres_span_thin_and_thick(vol):
    labels = vol.labels
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    n_sections = np.zeros(int(ids.max()) + 1)
    for z in range(labels.shape[0]):
        present = np.unique(labels[z])
        n_sections[present[present > 0].astype(np.int64)] += 1
    area = counts / n_sections[ids.astype(np.int64)]
    big = counts >= 500  # ignore slivers cut by the volume faces
    a = area[big]
    assert (a < 120).sum() >= 3, "thin axons / spine necks (<~12 px across)"
    assert (a > 1500).sum() >= 1, "thick dendrites (>~45 px across)"
    assert ((a > 150) & (a < 800)).sum() >= 5, "medium axons"


def test_anisotropy_objects_change_slowly_over_sections(vol):
    # neighbouring sections share most labels at the same pixel
    same = (vol.labels[1:] == vol.labels[:-1]) & (vol.labels[1:] > 0)
    assert same.mean() > 0.5


# ----------------------------------------------------------------- defects


def test_slip_changes_raw_only():
    base = generate_volume(SHAPE, SEED + 2)
    slipped = generate_volume(SHAPE, SEED + 2, slips=2)
    zs = [s["z"] for s in slipped.meta["slips"]]
    assert len(zs) == 2
    assert np.array_equal(slipped.labels, base.labels)
    for z in range(SHAPE[0]):
        if z in zs:
            assert not np.array_equal(slipped.raw[z], base.raw[z])
            dy, dx = slipped.meta["slips"][zs.index(z)]["shift_yx"]
            assert (dy, dx) != (0, 0)
            # the slipped image is the original content moved by (dy, dx)
            ys = slice(max(dy, 0) + 2, SHAPE[1] + min(dy, 0) - 2)
            xs = slice(max(dx, 0) + 2, SHAPE[2] + min(dx, 0) - 2)
            ys0 = slice(ys.start - dy, ys.stop - dy)
            xs0 = slice(xs.start - dx, xs.stop - dx)
            assert np.array_equal(slipped.raw[z, ys, xs], base.raw[z, ys0, xs0])
        else:
            assert np.array_equal(slipped.raw[z], base.raw[z])


def test_missing_section_is_blank_in_raw_only():
    base = generate_volume(SHAPE, SEED + 2)
    holed = generate_volume(SHAPE, SEED + 2, missing_sections=2)
    zs = holed.meta["missing_sections"]
    assert len(zs) == 2
    assert np.array_equal(holed.labels, base.labels)
    for z in range(SHAPE[0]):
        if z in zs:
            assert not holed.raw[z].any()
        else:
            assert np.array_equal(holed.raw[z], base.raw[z])


def test_step_shifts_raw_and_labels(vol, vol_steps):
    steps = vol_steps.meta["steps"]
    assert len(steps) == 2
    z0 = min(s["z"] for s in steps)
    assert np.array_equal(vol_steps.raw[:z0], vol.raw[:z0])
    assert not np.array_equal(vol_steps.raw[z0:], vol.raw[z0:])
    # labels move with the raw: the same partition before the first step (up to
    # slivers the step cut off, which become boundary) ...
    assert ((vol_steps.labels[:z0] > 0) == (vol.labels[:z0] > 0)).mean() > 0.98
    # ... and the shifted sections' boundaries still coincide with dark raw
    b = vol_steps.labels[z0:] == 0
    assert vol_steps.raw[z0:][b].mean() < vol_steps.raw[z0:][~b].mean() - 40


def test_bad_defect_counts_raise():
    with pytest.raises(ValueError):
        generate_volume((4, 32, 32), 0, missing_sections=5)


# ----------------------------------------------------------------- I/O and CLI


def test_zarr_round_trip(vol, tmp_path):
    from funlib.persistence import open_ds

    path = tmp_path / "synth.zarr"
    write_volume(path, vol, voxel_size=(29, 12, 12), offset=(58, 24, 0))
    back = read_volume(path)
    assert np.array_equal(back.raw, vol.raw) and back.raw.dtype == np.uint8
    assert np.array_equal(back.labels, vol.labels) and back.labels.dtype == np.uint64
    assert back.self_touches == vol.self_touches
    for key in ("seed", "shape", "missing_sections", "slips", "steps"):
        assert back.meta[key] == vol.meta[key]
    for name in ("raw", "labels"):
        ds = open_ds(str(path / name))
        assert tuple(ds.voxel_size) == (29, 12, 12)
        assert tuple(ds.offset) == (58, 24, 0)
        assert list(ds.axis_names) == ["z", "y", "x"]
        assert list(ds.units) == ["nm", "nm", "nm"]
        assert tuple(ds.shape) == SHAPE
    with pytest.raises(ValueError):
        write_volume(tmp_path / "bad.zarr", vol, offset=(10, 0, 0))


def test_cli_writes_container_and_preview(tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    png = tmp_path / "preview.png"
    rc = synth_main(
        [str(out), "--shape", "12", "64", "64", "--seed", "3", "--missing-sections", "1", "--slips", "1",
         "--preview", str(png)]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["shape"] == [12, 64, 64]
    back = read_volume(out)
    assert back.raw.shape == (12, 64, 64)
    assert len(back.meta["missing_sections"]) == 1 and len(back.meta["slips"]) == 1
    assert back.meta["voxel_size_nm"] == [29, 12, 12]
    assert png.stat().st_size > 10_000
    direct = generate_volume((12, 64, 64), 3, missing_sections=1, slips=1)
    assert np.array_equal(back.labels, direct.labels)
