"""Service tests for the GPU stages (run on CPU here): predict and mean-embedding
agglomeration with workers killed mid-block, GPU leases through the docker launcher.

The network is a tiny randomly initialised embedding net (widths 4-8-16): the tests
check the service (recovery, leases, identical results), not the predictions.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from embedseg_daisy.config import load_config, results_hash
from embedseg_daisy.pipeline.driver import execute
from embedseg_daisy.store import open_store
from embedseg_daisy.volumes import claim_output

from pipeline_helpers import write_config
from service_helpers import (
    BLOCK,
    FAKEBIN,
    REPO,
    assert_all_done,
    block_rows,
    fault_markers,
    read_array,
    reference_run,
)


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
    model = build_model(get_preset("tiny", widths=(4, 8, 16)))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model)


def gpu_config(tmp: Path, name: str, ref, checkpoint, stages, **sections) -> tuple[object, Path]:
    data = {
        "name": name,
        "input": {"container": str(ref["input"])},
        "output": {"container": str(tmp / f"{name}.zarr")},
        "predict": {"checkpoint": str(checkpoint), "block_shape_vox": list(BLOCK), "device": "cpu", "batch_size": 1},
        "segment": {"block_shape_vox": list(BLOCK), "context_vox": [2, 8, 8]},
        "contacts": {"block_shape_vox": list(BLOCK), "shards": 2},
        "stages": stages,
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = write_config(tmp / f"{name}.json", data)
    return load_config(path), path


def docker_launcher(**extra) -> dict:
    return {"kind": "docker", "image": "embedseg-daisy:gpu", "python": sys.executable, **extra}


def fake_cluster_env(monkeypatch, tmp: Path) -> Path:
    log = tmp / "fake_cluster.jsonl"
    monkeypatch.setenv("PATH", f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FAKE_CLUSTER_LOG", str(log))
    monkeypatch.setenv("FAKE_CLUSTER_STATE", str(tmp / "fake_cluster_state"))
    return log


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- predict ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predict_reference(ref, checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_ref")
    cfg, path = gpu_config(tmp, "pref", ref, checkpoint, ["predict"], predict={"workers": 1})
    outcome = execute(str(path), cfg, progress=False)
    assert outcome.ok, outcome.messages
    return cfg


def test_predict_workers_killed_in_docker_with_gpu_leases(ref, checkpoint, predict_reference, tmp_path, monkeypatch):
    """Two predict workers in (fake) docker containers sharing GPUs "0" and "1": one is
    killed before writing a block, one after writing but before marking it done."""
    log = fake_cluster_env(monkeypatch, tmp_path)
    cfg, path = gpu_config(
        tmp_path, "pkill", ref, checkpoint, ["predict"],
        predict={"workers": 2, "launcher": docker_launcher(gpus=["0", "1"])},
    )
    monkeypatch.setenv("EMBEDSEG_FAULT", "predict:0_0_1:before_write,predict:1_1_0:after_write")
    outcome = execute(str(path), cfg, progress=False)  # killed blocks are re-queued
    assert outcome.ok, outcome.messages
    assert len(fault_markers(cfg)) == 2

    for name in ("affinities", "mask"):
        assert np.array_equal(read_array(cfg, name), read_array(predict_reference, name)), name
    assert_all_done(cfg)
    rows = {r["block"]: r for r in block_rows(cfg, "predict")}
    assert rows["0_0_1"]["attempt"] == 2 and rows["1_1_0"]["attempt"] == 2
    assert {r["gpu"] for r in rows.values()} <= {"0", "1"}, "blocks record the host GPU id they ran on"

    events = read_log(log)
    runs = [e for e in events if e["tool"] == "docker" and e["op"] == "run"]
    exits = {e["pid"]: e for e in events if e["tool"] == "docker" and e["op"] == "exit"}
    assert len(runs) >= 3, "two workers plus at least one replacement for a killed one"
    for e in runs:
        assert e["name"].startswith("embedseg-pkill-predict-w"), e["name"]
        assert e["image"] == "embedseg-daisy:gpu" and e["rm"] and e["network"] == "host"
        assert e["has_context"] and "DAISY_CONTEXT" in e["env"]
        assert e["cmd"][1:5] == ["-m", "embedseg_daisy.worker", "--stage", "predict"]
        assert e["gpu"] in ("0", "1")
    assert len({e["name"] for e in runs}) == len(runs), "every container gets its own name"
    assert sorted(e["code"] for e in exits.values()).count(137) == 2, "the two killed workers exit like docker's 137"
    # every container is swept with `docker rm -f NAME` after it ends
    swept = [e["name"] for e in events if e["tool"] == "docker" and e["op"] == "rm"]
    assert sorted(swept) == sorted(e["name"] for e in runs)
    # GPU leases: containers that ran at the same time had different GPUs
    spans = [(e["t"], exits[e["pid"]]["t"], e["gpu"], e["name"]) for e in runs]
    overlapping = 0
    for i, (a0, a1, ga, na) in enumerate(spans):
        for b0, b1, gb, nb in spans[i + 1 :]:
            if a0 < b1 and b0 < a1:
                overlapping += 1
                assert ga != gb, f"{na} and {nb} ran at the same time on GPU {ga}"
    assert overlapping >= 1, "the two workers never ran concurrently; the lease check proved nothing"


# -- mean-embedding agglomeration ---------------------------------------------------------------------
def nearby_pairs(seg: np.ndarray, n: int) -> list[tuple[int, int, list[float]]]:
    """``n`` pairs of segments at most 3 voxels apart along x (membranes are background),
    each with the midpoint of one such gap."""
    pairs: dict[tuple[int, int], list[float]] = {}
    for gap in (1, 2, 3):
        a, b = seg[:, :, :-gap], seg[:, :, gap:]
        z, y, x = np.nonzero((a != b) & (a != 0) & (b != 0))
        for zi, yi, xi in zip(z, y, x):
            key = tuple(sorted((int(a[zi, yi, xi]), int(b[zi, yi, xi]))))
            pairs.setdefault(key, [float(zi), float(yi), float(xi) + gap / 2])
    keys = sorted(pairs)
    assert len(keys) >= n, f"only {len(keys)} pairs of nearby segments"
    picked = [keys[i] for i in np.linspace(0, len(keys) - 1, n).astype(int)]
    return [(s1, s2, pairs[(s1, s2)]) for s1, s2 in picked]


def test_mea_worker_killed_while_holding_leases(ref, checkpoint, tmp_path, monkeypatch):
    cfg, path = gpu_config(
        tmp_path, "meakill", ref, checkpoint, ["mea"],
        mea={"workers": 1, "lease_s": 4.0, "device": "cpu"},
    )
    # the segmentation comes from the reference run; candidates are seeded as pending
    out = Path(cfg.output.container)
    claim_output(str(out), cfg.name, results_hash(cfg))
    shutil.copytree(Path(ref["cfg"].output.container) / "segmentation", out / "segmentation")
    seg = read_array(ref["cfg"], "segmentation")
    pairs = nearby_pairs(seg, 8)
    with open_store(cfg) as store:
        store.put(
            "candidates",
            [
                {"segmentation": "segmentation", "s1": s1, "s2": s2, "centroid": c, "score": 0.5, "n_contacts": 2,
                 "status": "pending", "lease_owner": "", "lease_expires": 0.0, "attempts": 0}
                for s1, s2, c in pairs
            ],
        )
    monkeypatch.setenv("EMBEDSEG_FAULT", "mea:*:leased")  # killed holding its first leases
    outcome = execute(str(path), cfg, progress=False)  # the killed slot is re-queued
    assert outcome.ok, outcome.messages
    (fired,) = fault_markers(cfg).values()
    killed_owner = f"{socket.gethostname()}:{fired.split()[1]}"  # the MEA stage's lease owner
    assert_all_done(cfg)

    with open_store(cfg) as store:
        rows = store.find("candidates", order_by=["s1", "s2"])
    assert len(rows) == len(pairs), "no candidate is duplicated"
    assert {r["status"] for r in rows} == {"decided"}
    assert killed_owner not in {r["decided_by"] for r in rows}
    # the killed worker held leases; they expired and its replacement leased them again
    assert max(r["attempts"] for r in rows) >= 2

    # decisions equal an undisturbed computation of the same candidates
    from embedseg_daisy.pipeline.registry import build_stage
    from embedseg_daisy.pipeline.stage import RunContext

    stage = build_stage(RunContext(cfg, str(path)), "mea")
    stage.setup()
    for r in rows:
        want = stage.decide(r)
        assert r["merge"] == want["merge"] and r["reason"] == want["reason"], (r, want)
        assert r["distance"] == pytest.approx(want["distance"], rel=1e-4, abs=1e-5)
