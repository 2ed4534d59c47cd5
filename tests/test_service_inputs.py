"""Service tests: bad inputs and refused resumes.

Each case must stop with a clear one-line error and the documented exit status
(2 bad config or input, 4 the output or store holds a different run) before anything
is written: the existing run's output container and store hash the same before and
after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Coordinate
from funlib.persistence import prepare_ds

from embedseg_daisy.config import _strip_runtime, digest, load_config, results_hash
from embedseg_daisy.store import open_store
from embedseg_daisy.run import main as run_main

from service_helpers import SHAPE, block_rows, read_array, reference_run, run_state_hash


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from embedseg_daisy.nn.checkpoint import save_checkpoint
    from embedseg_daisy.nn.presets import get_preset
    from embedseg_daisy.nn.rsunet import build_model

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_model(get_preset("tiny", widths=(4, 8, 16))))


def write_raw(container: Path, data: np.ndarray, voxel_size=(29, 12, 12)) -> Path:
    array = prepare_ds(
        str(container / "raw"), shape=data.shape, offset=(0, 0, 0), voxel_size=Coordinate(voxel_size),
        dtype=data.dtype, mode="w",
    )
    if data.size:
        array[array.roi] = data
    return container


def variant(ref, tmp: Path, name: str, edit) -> Path:
    """The reference run's config file, edited: same run name, same output and store."""
    data = json.loads(Path(ref["path"]).read_text())
    edit(data)
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def run_cli(path, *extra, capsys) -> tuple[int, str]:
    code = run_main([str(path), "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    return code, err


def bad_raws(tmp: Path) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(0)
    raw = rng.random(SHAPE, dtype=np.float32)
    nan = raw.copy()
    nan[7, 50, 60] = np.nan
    return {
        "nan": (write_raw(tmp / "nan.zarr", nan), "NaN or inf value(s)"),
        "int16": (write_raw(tmp / "int16.zarr", (raw * 1000).astype(np.int16)), "expected dtype uint8 or float32, found int16"),
        "voxel": (write_raw(tmp / "voxel.zarr", (raw * 255).astype(np.uint8), (40, 4, 4)), "voxel size mismatch"),
        "empty": (write_raw(tmp / "empty.zarr", np.zeros((0, 96, 96), np.uint8)), "the volume is empty"),
        "no_container": (tmp / "missing.zarr", "zarr container not found"),
    }


def test_bad_inputs_fail_cleanly_and_touch_nothing(ref, checkpoint, tmp_path, capsys):
    before = run_state_hash(ref["cfg"])
    inputs = bad_raws(tmp_path)

    cases = []
    for key, (container, message) in inputs.items():
        def edit(d, container=container):
            d["input"]["container"] = str(container)
            d["input"].pop("labels")
            d["predict"]["checkpoint"] = str(checkpoint)
            d["stages"] = ["predict"] + d["stages"]  # the NaN check guards the stages that read raw

        cases.append((key, variant(ref, tmp_path, key, edit), 2, message))
    cases.append(
        ("no_dataset", variant(ref, tmp_path, "no_dataset", lambda d: d["input"].update(raw="nope")), 2,
         "dataset 'nope' not found")
    )
    cases.append(
        ("other_run", variant(ref, tmp_path, "other_run", lambda d: d.update(name="intruder")), 4,
         "holds run 'ref', not 'intruder'")
    )

    def other_store(d):
        d["name"] = "intruder"
        d["store"] = {"path": str(tmp_path / "intruder.sqlite")}

    cases.append(("other_run_own_store", variant(ref, tmp_path, "other_store", other_store), 4, "already holds run 'ref'"))
    cases.append(
        ("changed_config", variant(ref, tmp_path, "changed", lambda d: d["segment"].update(theta_mask=0.5)), 4,
         "changed fields that affect results: segment.theta_mask")
    )
    for key, path, want_code, message in cases:
        code, err = run_cli(path, capsys=capsys)
        assert code == want_code, (key, code, err)
        assert err.startswith("error: ") and "\n" not in err, (key, err)
        assert message in err, (key, err)
        if key.startswith("other_run"):
            assert "--force" not in err, "--force cannot make another run's output ours"
        assert run_state_hash(ref["cfg"]) == before, f"{key}: the existing run's output or store changed"


def test_changed_config_resumes_only_with_force(ref, tmp_path, capsys):
    ref_state = run_state_hash(ref["cfg"])
    # a copy of the finished reference run (output, store, run directory) under a new path
    src = Path(ref["cfg"].output.container)
    out = tmp_path / "copy.zarr"
    shutil.copytree(src, out)
    shutil.copytree(str(src) + ".run", str(out) + ".run")
    shutil.copy(ref["cfg"].store_path(), str(out) + ".store.sqlite")

    def edit(d):
        d["output"]["container"] = str(out)
        d["segment"]["theta_mask"] = 0.5

    path = variant(ref, tmp_path, "forced", edit)
    cfg = load_config(path)
    state = run_state_hash(cfg)
    code, err = run_cli(path, capsys=capsys)
    assert code == 4 and "segment.theta_mask" in err and "--force" in err, err
    assert run_state_hash(cfg) == state

    blocks_before = {(r["stage"], r["block"]): r["started"] for r in block_rows(cfg)}
    code, err = run_cli(path, "--force", capsys=capsys)
    assert code == 0, err
    # finished blocks keep their results: nothing was recomputed
    assert {(r["stage"], r["block"]): r["started"] for r in block_rows(cfg)} == blocks_before
    for name in ("fragments", "segmentation"):
        assert np.array_equal(read_array(cfg, name), read_array(ref["cfg"], name))
    # ... and the forced config is now the run's config: a plain resume is accepted
    code, err = run_cli(path, capsys=capsys)
    assert code == 0, err
    assert run_state_hash(ref["cfg"]) == ref_state, "the copy's run must not touch the original"


def _as_if_started_by_an_older_version(cfg, field: tuple[str, str]) -> str:
    """Rewrite a run's stored config, hash and output marker as a version without
    ``field`` (section, name) would have written them; returns that old hash."""
    section, name = field
    stripped = _strip_runtime(cfg)
    del stripped[section][name]
    old_hash = digest(stripped)
    store = open_store(cfg)
    try:
        row = store.find("runs")[0]
        del row["config"][section][name]
        row["results_hash"] = old_hash
        store.put("runs", [row])
    finally:
        store.close()
    marker = Path(cfg.output.container) / "embedseg_daisy.json"
    marker.write_text(json.dumps({"run": cfg.name, "results_hash": old_hash}))
    return old_hash


def test_run_from_an_older_version_resumes_without_force(ref, tmp_path, capsys):
    """A field added by an upgrade, left at its default, is not a changed configuration:
    the run resumes without --force, recomputes nothing and takes the new hash.  A real
    change is still refused and named."""
    src = Path(ref["cfg"].output.container)
    out = tmp_path / "old.zarr"
    shutil.copytree(src, out)
    shutil.copytree(str(src) + ".run", str(out) + ".run")
    shutil.copy(ref["cfg"].store_path(), str(out) + ".store.sqlite")
    path = variant(ref, tmp_path, "old", lambda d: d["output"].update(container=str(out)))
    cfg = load_config(path)
    old_hash = _as_if_started_by_an_older_version(cfg, ("agglomerate", "last_level_tile_blocks"))
    assert old_hash != results_hash(cfg)

    changed = variant(ref, tmp_path, "old_changed", lambda d: (d["output"].update(container=str(out)), d["segment"].update(theta_mask=0.5)))
    state = run_state_hash(cfg)
    code, err = run_cli(changed, capsys=capsys)
    assert code == 4 and "changed fields that affect results: segment.theta_mask" in err, err
    assert run_state_hash(cfg) == state, "a refused resume must leave the run untouched"

    blocks_before = {(r["stage"], r["block"]): r["started"] for r in block_rows(cfg)}
    code, err = run_cli(path, capsys=capsys)
    assert code == 0, err
    assert {(r["stage"], r["block"]): r["started"] for r in block_rows(cfg)} == blocks_before
    store = open_store(cfg)
    try:
        assert store.find("runs")[0]["results_hash"] == results_hash(cfg)
    finally:
        store.close()
    marker = json.loads((out / "embedseg_daisy.json").read_text())
    assert marker["results_hash"] == results_hash(cfg)
    for name in ("fragments", "segmentation"):
        assert np.array_equal(read_array(cfg, name), read_array(ref["cfg"], name))
