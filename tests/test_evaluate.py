"""``python -m embedseg_daisy.evaluate``: VI per method from volumes in the output
container, MEA curves and decision quality from the store, scores written back."""

import json

import numpy as np
import pytest
from funlib.geometry import Roi

from embedseg_daisy.config import load_config
from embedseg_daisy.evaluate import evaluate_run, main, majority_gt, mea_decision_quality
from embedseg_daisy.evaluation.metrics import contingency_table
from embedseg_daisy.store import open_store
from embedseg_daisy.volumes import prepare_volume

from pipeline_helpers import segment_config, write_config

SHAPE = (4, 16, 16)


def write(container, name, data, dtype=np.uint64):
    vol = prepare_volume(str(container), name, roi=Roi((0, 0, 0), SHAPE), voxel_size=(29, 12, 12),
                         dtype=dtype, chunk_shape=SHAPE)
    vol.write(vol.roi, data.astype(dtype))


@pytest.fixture
def run(tmp_path):
    gt = np.zeros(SHAPE, np.uint64)
    gt[:, :, :8] = 1
    gt[:, :, 8:] = 2
    gt[:, 0, :] = 0  # ignored voxels
    seg = gt.copy()
    seg[:, :8, :8] = 1
    seg[:, 8:, :8] = 3  # object 1 split into segments 1 and 3
    seg[:, :, 8:] = 2
    seg[gt == 0] = 9  # a segment made only of ignored voxels
    mea = seg.copy()
    mea[mea == 3] = 1  # MEA merged the split
    write(tmp_path / "input.zarr", "labels", gt)
    write(tmp_path / "input.zarr", "raw", np.full(SHAPE, 128), np.uint8)
    for name, data in [("segmentation", seg), ("segmentation_mea", mea)]:
        write(tmp_path / "out.zarr", name, data)
    data = segment_config(tmp_path, "out", SHAPE)
    data["evaluate"] = {"plot": str(tmp_path / "ms.png")}
    cfg = load_config(write_config(tmp_path / "out.json", data))
    store = open_store(cfg)
    rows = [
        {"segmentation": "segmentation", "s1": 1, "s2": 3, "status": "decided", "merge": 1, "distance": 0.4},
        {"segmentation": "segmentation", "s1": 1, "s2": 2, "status": "decided", "merge": 0, "distance": 2.8},
        {"segmentation": "segmentation", "s1": 2, "s2": 9, "status": "decided", "merge": 1, "distance": 1.2},
        {"segmentation": "segmentation", "s1": 3, "s2": 2, "status": "pending", "merge": 0, "distance": -1.0},
    ]
    store.put("candidates", rows)
    store.close()
    return tmp_path, cfg, gt, seg


def test_majority_gt_ignores_label_zero(run):
    _, _, gt, seg = run
    owner = majority_gt(contingency_table(gt, seg))
    assert owner == {1: 1, 2: 2, 3: 1}  # segment 9 has only ignored voxels: no owner


def test_mea_decision_quality_counts(run):
    _, cfg, gt, seg = run
    store = open_store(cfg)
    q = mea_decision_quality(store, contingency_table(gt, seg), "segmentation")
    store.close()
    # (1,3) true merge, (1,2) true keep, (2,9) false merge (9 has no object); pending ignored
    assert (q["decided"], q["true_merges"], q["false_merges"], q["missed_merges"], q["true_keeps"]) == (3, 1, 1, 0, 1)
    assert q["precision"] == 0.5 and q["recall"] == 1.0


def test_evaluate_run_scores_store_and_plot(run, tmp_path):
    _, cfg, _, _ = run
    result = evaluate_run(cfg)
    methods = result["methods"]
    assert set(methods) == {"MWS", "MWS+MEA"}  # the baseline datasets do not exist
    assert methods["MWS"]["vi_split"] > 0.1 and methods["MWS+MEA"]["vi_split"] == pytest.approx(0.0, abs=1e-12)
    # the θ_d curve: at θ_d = 0.5 only the (1, 3) merge (d = 0.4) is applied
    curve = dict((t, (s, m)) for t, s, m in result["curves"]["MWS+MEA (θ_d)"])
    assert curve[0.5][0] == pytest.approx(0.0, abs=1e-12)
    assert (tmp_path / "ms.png").stat().st_size > 0
    store = open_store(cfg)
    rows = store.find("scores", {"method": "MWS"})
    store.close()
    assert len(rows) == 1 and rows[0]["vi_split"] == pytest.approx(methods["MWS"]["vi_split"])


def test_cli_bits_and_json(run, tmp_path, capsys):
    _, cfg, _, _ = run
    out = tmp_path / "scores.json"
    assert main([str(tmp_path / "out.json"), "--log-base", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(bits)" in text and "MEA on segmentation: 3 decided, 2 merged; precision 0.500" in text
    saved = json.loads(out.read_text())
    nats = evaluate_run(cfg)["methods"]["MWS"]["vi_split"]
    assert saved["methods"]["MWS"]["vi_split"] == pytest.approx(nats / np.log(2))


def test_missing_ground_truth_is_a_clear_error(run, tmp_path, capsys):
    data = json.loads((tmp_path / "out.json").read_text())
    data["input"]["labels"] = None
    path = write_config(tmp_path / "nolabels.json", data)
    assert main([str(path)]) == 2
    assert "ground truth" in capsys.readouterr().err
