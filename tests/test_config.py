"""Run configuration: strict validation, clear one-line errors, schema, result hash."""

import json
import subprocess
import sys

import pytest

from embedseg_daisy.config import load_config, parse_config, results_diff, results_hash, _strip_runtime
from embedseg_daisy.errors import ConfigError

BASE = {
    "input": {"container": "in.zarr"},
    "output": {"container": "out.zarr"},
    "predict": {"checkpoint": "model.pt"},
}


def with_(patch):
    data = json.loads(json.dumps(BASE))
    for dotted, value in patch.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def test_defaults_are_the_papers():
    cfg = parse_config(BASE)
    assert cfg.segment.theta_mask == 0.6
    assert cfg.contacts.theta_self_touch == 0.25
    assert cfg.mea.theta_d == 1.5
    assert tuple(cfg.mea.focal_window_vox) == (5, 32, 32)
    assert len(cfg.offsets.attractive) == 3 and len(cfg.offsets.repulsive) == 9
    assert cfg.offsets.nearest_channels() == [2, 1, 0]  # paper order is x, y, z


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"surprise": 1}, "surprise"),
        ({"segment.theta_mask": 1.2}, "segment.theta_mask"),
        ({"predict.block_shape_vox": [0, 64, 64]}, "predict.block_shape_vox"),
        ({"offsets.repulsive": [[0, 5]]}, "offsets.repulsive"),
        ({"offsets.repulsive": [[0, "a", 1]]}, "offsets.repulsive"),
        ({"offsets.attractive": [[0, 0, -1]]}, "offsets"),
        ({"predict.launcher": {"kind": "docker"}}, "predict.launcher"),
        ({"segment.workers": 0}, "segment.workers"),
        ({"agglomerate.last_level_tile_blocks": [0, 2, 2]}, "agglomerate.last_level_tile_blocks"),
    ],
)
def test_bad_values_name_the_field(patch, field):
    with pytest.raises(ConfigError) as err:
        parse_config(with_(patch), "cfg.json")
    message = str(err.value)
    assert "\n" not in message
    assert f"field '{field}" in message


def test_missing_required_field():
    data = with_({})
    del data["predict"]["checkpoint"]
    with pytest.raises(ConfigError, match=r"field 'predict.checkpoint': required field is missing"):
        parse_config(data)


def test_duplicate_offset_rejected():
    with pytest.raises(ConfigError, match="appears twice"):
        parse_config(with_({"offsets.repulsive": [[0, 0, 1], [0, 0, -5]]}))


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)


def test_results_hash_ignores_runtime_fields_only():
    a = parse_config(BASE)
    b = parse_config(with_({"segment.workers": 8, "store.backend": "mongodb", "predict.batch_size": 16}))
    c = parse_config(with_({"segment.theta_mask": 0.5}))
    assert results_hash(a) == results_hash(b)
    assert results_hash(a) != results_hash(c)
    assert results_diff(_strip_runtime(a), _strip_runtime(c)) == ["segment.theta_mask"]


def test_schema_cli_prints_json_schema():
    out = subprocess.run(
        [sys.executable, "-m", "embedseg_daisy.config", "--schema"], capture_output=True, text=True, check=True
    )
    schema = json.loads(out.stdout)
    assert schema["additionalProperties"] is False
    assert "theta_mask" in json.dumps(schema)


def test_example_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("demo.json", "cluster.json", "paper.json"):
        load_config(root / name)
