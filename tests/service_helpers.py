"""Shared pieces of the service tests (``tests/test_service_*.py``).

Runs here are tiny (12 x 96 x 96 voxels, blocks of 6 x 48 x 48) and the segmentation
stages run on oracle affinities (see ``pipeline_helpers``), so a whole run takes
seconds.  The reference ("undisturbed") run is computed once per test session and
cached on disk under pytest's base temp directory, so every test module can compare
against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from embedseg_daisy.config import load_config, results_hash
from embedseg_daisy.store import open_store
from embedseg_daisy.volumes import claim_output, open_volume

from pipeline_helpers import make_input, oracle_outputs, segment_config, write_config

REPO = Path(__file__).resolve().parents[1]
FAKEBIN = Path(__file__).resolve().parent / "fakebin"
SHAPE = (12, 96, 96)
BLOCK = (6, 48, 48)
SEED = 3
SEGMENT_STAGES = ["fragments", "fragment_edges", "agglomerate", "relabel", "contacts"]
SEGMENT_ARRAYS = ["fragments", "segmentation"]
#: store collections written by the segmentation stages (compared row by row)
SEGMENT_COLLECTIONS = [
    "fragments",
    "fragment_edges",
    "lookups",
    "level_edges",
    "fragment_segments",
    "contact_pieces",
    "contact_links",
    "contact_edges",
]


# -- processes ---------------------------------------------------------------------------
def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a ``python -m embedseg_daisy.X`` subprocess: the repository on
    ``PYTHONPATH``, no leftover fault injection, fake executables first on ``PATH``."""
    env = dict(os.environ)
    env.pop("EMBEDSEG_FAULT", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(FAKEBIN), env.get("PATH", "")])
    env.update(extra)
    return env


def cli(module: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m embedseg_daisy.<module> ARGS`` and wait."""
    return subprocess.run(
        [sys.executable, "-m", f"embedseg_daisy.{module}", *map(str, args)],
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
    )


def start_cli(module: str, *args: str, env: dict | None = None, log: Path) -> subprocess.Popen:
    """Start ``python -m embedseg_daisy.<module>`` in a new session (its workers share
    its process group, so the test can tell when they are all gone)."""
    out = open(log, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", f"embedseg_daisy.{module}", *map(str, args)],
        env=env or cli_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=str(REPO),
        start_new_session=True,
    )


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting to be reaped by
    init do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# -- runs ------------------------------------------------------------------------------------
def prepare_run(
    tmp: Path,
    name: str,
    labels: np.ndarray,
    *,
    stages=None,
    block=BLOCK,
    workers: int = 2,
    oracle: bool = True,
    input_container: Path | None = None,
    **extra,
) -> tuple[object, Path]:
    """Config file + claimed output container with oracle affinities and mask."""
    data = segment_config(tmp, name, block, stages=stages or SEGMENT_STAGES, workers=workers, **extra)
    if input_container is not None:
        data["input"]["container"] = str(input_container)
    path = write_config(tmp / f"{name}.json", data)
    cfg = load_config(path)
    if oracle:
        claim_output(cfg.output.container, cfg.name, results_hash(cfg))
        oracle_outputs(Path(cfg.output.container), labels, block=block)
    return cfg, path


def reference_run(base: Path) -> dict:
    """The undisturbed segmentation run (fragments ... contacts), computed once per
    session: ``{"tmp", "labels", "cfg", "path"}``.  Read-only for every test."""
    from embedseg_daisy.pipeline.driver import execute

    tmp = base / "service-reference"
    done = tmp / "DONE"
    if not done.exists():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        labels = make_input(tmp / "input.zarr", SHAPE, seed=SEED)
        cfg, path = prepare_run(tmp, "ref", labels)
        outcome = execute(str(path), cfg, progress=False)
        assert outcome.ok, outcome.messages
        np.save(tmp / "labels.npy", labels)
        done.write_text("ok")
    labels = np.load(tmp / "labels.npy")
    path = tmp / "ref.json"
    return {"tmp": tmp, "labels": labels, "cfg": load_config(path), "path": path, "input": tmp / "input.zarr"}


# -- comparing results ---------------------------------------------------------------------------
def read_array(cfg, name: str) -> np.ndarray:
    vol = open_volume(cfg.output.container, name)
    return vol.read(vol.roi)


def store_rows(cfg, collection: str, drop=()) -> list[tuple]:
    """Every row of a collection, as sorted tuples (json fields as JSON text)."""
    store = open_store(cfg)
    try:
        rows = store.find(collection)
    finally:
        store.close()
    out = []
    for r in rows:
        out.append(tuple((k, json.dumps(v, sort_keys=True)) for k, v in sorted(r.items()) if k not in drop))
    return sorted(out)


def assert_same_results(cfg, ref_cfg, arrays=SEGMENT_ARRAYS, collections=SEGMENT_COLLECTIONS) -> None:
    for name in arrays:
        a, b = read_array(cfg, name), read_array(ref_cfg, name)
        assert np.array_equal(a, b), f"array {name} differs from the undisturbed run"
    for c in collections:
        got, want = store_rows(cfg, c), store_rows(ref_cfg, c)
        assert len(got) == len(want), f"store collection {c}: {len(got)} rows, undisturbed run has {len(want)}"
        assert got == want, f"store collection {c} differs from the undisturbed run"


def block_rows(cfg, stage: str | None = None) -> list[dict]:
    store = open_store(cfg)
    try:
        return store.find("blocks", {"stage": stage} if stage else None, order_by=["stage", "block"])
    finally:
        store.close()


def assert_all_done(cfg) -> None:
    """Every planned block of every stage is marked done exactly once."""
    store = open_store(cfg)
    try:
        plans = store.find("stages")
        assert plans
        for p in plans:
            rows = store.find("blocks", {"stage": p["stage"]})
            assert len(rows) == p["total_blocks"], (p["stage"], len(rows), p["total_blocks"])
            assert {r["status"] for r in rows} == {"done"}, (p["stage"], [r for r in rows if r["status"] != "done"])
    finally:
        store.close()


def fault_markers(cfg) -> dict[str, str]:
    """Faults that fired: marker name -> 'block pid'."""
    d = Path(str(cfg.output.container) + ".run") / "faults"
    return {p.name: p.read_text().strip() for p in sorted(d.iterdir())} if d.exists() else {}


# -- "untouched" ---------------------------------------------------------------------------------
def tree_hash(path: Path) -> str:
    """Hash of every file (name and bytes) under ``path``; '' when it does not exist."""
    path = Path(path)
    if not path.exists():
        return ""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def sqlite_hash(path: Path) -> str:
    """Hash of a SQLite store's logical content (the WAL makes file bytes unreliable)."""
    path = Path(path)
    if not path.exists():
        return ""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


def run_state_hash(cfg) -> tuple[str, str]:
    return tree_hash(Path(cfg.output.container)), sqlite_hash(cfg.store_path())
