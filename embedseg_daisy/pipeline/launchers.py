"""How worker processes start: locally, in Docker containers, or through Slurm.

daisy calls a stage's process function once per worker slot, in a subprocess of its
own, with the worker's ``context`` (scheduler host, port, task, worker id).  The
local launcher runs the worker loop right there; the docker and slurm launchers run
``python -m embedseg_daisy.worker`` elsewhere and block until it exits, passing
``DAISY_CONTEXT`` through.  GPUs are leased (an exclusive file lock per GPU id in the
run directory), so concurrent workers never share a GPU, whatever their worker ids.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from ..config import LauncherConfig
from .faults import ENV as FAULT_ENV
from .stage import GPU_ID_ENV


@contextlib.contextmanager
def gpu_lease(gpus: list[str] | None, lease_dir: Path, poll_s: float = 1.0) -> Iterator[str | None]:
    """Hold an exclusive lock on one GPU id from ``gpus`` for the duration of the block.

    The lock is an flock on ``lease_dir/gpu-<id>.lock``: it is released by the kernel
    when the holder dies, so a killed worker never strands its GPU."""
    if not gpus:
        yield None
        return
    lease_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            fd = os.open(lease_dir / f"gpu-{gpu}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                yield gpu
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(poll_s)


def container_name(run_name: str, stage_id: str, worker_id: str | int) -> str:
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in f"{run_name}-{stage_id}")
    return f"embedseg-{safe}-w{worker_id}"


def worker_command(launcher: LauncherConfig, stage_id: str, config_path: str) -> list[str]:
    config = launcher.config_path_in_worker or config_path
    return [*shlex.split(launcher.python), "-m", "embedseg_daisy.worker", "--stage", stage_id, config]


def docker_command(
    launcher: LauncherConfig, *, name: str, context_env: str, gpu: str | None, stage_id: str, config_path: str
) -> list[str]:
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "host", "-e", "DAISY_CONTEXT"]
    # credentials travel as environment variable *names*, never values on the command line;
    # EMBEDSEG_FAULT is the test-only fault injection (pipeline/faults.py)
    for var in ("EMBEDSEG_MONGODB_URI", FAULT_ENV):
        if var in os.environ:
            cmd += ["-e", var]
    if gpu is not None:
        # inside the container the leased GPU is device 0; the host id is recorded
        # with each block (worker_identity) through EMBEDSEG_GPU_ID
        cmd += ["--gpus", f"device={gpu}", "-e", f"{GPU_ID_ENV}={gpu}"]
    cmd += list(launcher.docker_args)
    cmd += [launcher.image or "", *worker_command(launcher, stage_id, config_path)]
    del context_env  # passed through the environment, see run_launcher
    return cmd


def slurm_command(launcher: LauncherConfig, *, stage_id: str, config_path: str, job_name: str) -> list[str]:
    inner = worker_command(launcher, stage_id, config_path)
    if launcher.slurm_mode == "srun":
        return ["srun", "--job-name", job_name, "--export=ALL", *launcher.slurm_args, *inner]
    return ["sbatch", "--wait", "--job-name", job_name, "--export=ALL", *launcher.slurm_args, "--wrap", shlex.join(inner)]


def sweep_container(name: str) -> None:
    """Remove a container that outlived its worker (interrupted run)."""
    subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


class WorkerLauncher:
    """daisy process function for a stage: a callable taking the worker ``context``.

    Picklable (plain data only), so daisy can ship it to its worker subprocess."""

    def __init__(self, config_path: str, stage_id: str, run_name: str, run_dir: str, launcher: LauncherConfig, gpu: bool):
        self.config_path = config_path
        self.stage_id = stage_id
        self.run_name = run_name
        self.run_dir = run_dir
        self.launcher = launcher
        self.gpu = gpu

    def __call__(self, *, context=None):
        gpus = self.launcher.gpus if self.gpu else None
        with gpu_lease(gpus, Path(self.run_dir) / "gpu_leases") as gpu:
            if gpu is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
            kind = self.launcher.kind
            if kind == "local":
                from .worker import run_worker

                run_worker(self.config_path, self.stage_id, context)
                return
            env = dict(os.environ)
            if context is not None:
                env["DAISY_CONTEXT"] = context.to_env()
            worker_id = context["worker_id"] if context is not None else os.getpid()
            if kind == "docker":
                name = container_name(self.run_name, self.stage_id, worker_id)
                cmd = docker_command(
                    self.launcher,
                    name=name,
                    context_env=env.get("DAISY_CONTEXT", ""),
                    gpu=gpu,
                    stage_id=self.stage_id,
                    config_path=self.config_path,
                )
                try:
                    subprocess.run(cmd, env=env, check=True)
                finally:
                    sweep_container(name)
            elif kind == "slurm":
                job = container_name(self.run_name, self.stage_id, worker_id)
                cmd = slurm_command(self.launcher, stage_id=self.stage_id, config_path=self.config_path, job_name=job)
                subprocess.run(cmd, env=env, check=True)
            else:  # pragma: no cover - the config validates kind
                raise ValueError(f"unknown launcher kind {kind!r}")
