"""The worker loop every stage runs (worker-function mode with a daisy Client).

One process per worker: build the stage from the config, set it up once, then
acquire blocks until the scheduler has none left.  A block is recorded as
``running`` (with its attempt number) when it starts, its outputs are written by
``Stage.process``, and only then is the block marked done in the store.  A worker
killed mid-block leaves the ``running`` row behind, so the retry's attempt number
goes up.  An exception in
one block is logged, recorded as a failed attempt and reported to daisy (which
retries the block up to ``max_retries``) without killing the worker.  If the store is
unreachable when marking a block done, the block fails and is retried: nothing is
marked done that was not written.

Run by hand or in a container: ``python -m embedseg_daisy.worker --stage NAME CONFIG``
with ``DAISY_CONTEXT`` set by the scheduler.

Tests inject faults (kill, raise, sleep) at ``before_write`` / ``after_write`` of a
chosen block through ``EMBEDSEG_FAULT`` (see :mod:`embedseg_daisy.pipeline.faults`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from ..config import load_config
from ..store import open_store
from .faults import fault_point
from .registry import build_stage
from .stage import RunContext, worker_identity

log = logging.getLogger("embedseg_daisy.worker")


def _setup_logging(run: RunContext, stage_id: str, worker_id: str) -> Path:
    log_dir = run.run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{stage_id}-worker{worker_id}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("embedseg_daisy")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return path


def _previous_attempts(store, stage_id: str, key: str) -> int:
    rows = store.find("blocks", {"stage": stage_id, "block": key}, fields=["attempt"])
    return int(rows[0]["attempt"] or 0) if rows else 0


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
    return text[:500]


def run_worker(config_path: str, stage_id: str, context=None) -> int:
    """Process blocks of ``stage_id`` until none are left; returns blocks processed."""
    import daisy.v2 as daisy
    from daisy.block import BlockStatus

    cfg = load_config(config_path)
    run = RunContext(cfg, config_path)
    client = daisy.Client(context) if context is not None else daisy.Client()
    worker_id = str(client.context.get("worker_id", os.getpid())) if client.connected else str(os.getpid())
    _setup_logging(run, stage_id, worker_id)
    stage = build_stage(run, stage_id)
    store = open_store(cfg)
    ident = worker_identity()
    log.info("worker %s for %s on %s (gpu %r) starting", worker_id, stage_id, ident["host"], ident["gpu"])
    stage.setup()
    processed = 0
    while True:
        with client.acquire_block() as block:
            if block is None:
                break
            info = stage.block_info(block.write_roi)
            started = time.time()
            try:
                attempt = _previous_attempts(store, stage_id, info.key) + 1
            except Exception:
                attempt = 1
            record = {
                "roi_offset": list(info.write_roi.offset),
                "roi_shape": list(info.write_roi.shape),
                "worker": int(worker_id) if worker_id.isdigit() else -1,
                "host": ident["host"],
                "gpu": ident["gpu"],
                "started": started,
                "attempt": attempt,
            }
            try:
                # "running" first: a worker killed mid-block leaves this row, so the
                # retry's attempt counter goes up and the store shows where it died
                store.put("blocks", [{"stage": stage_id, "block": info.key, "status": "running", **record}])
                fault_point(run.run_dir, stage_id, info.key, "before_write")
                extra = stage.process(info) or {}
                fault_point(run.run_dir, stage_id, info.key, "after_write")
                record.update(duration=time.time() - started, error="", **extra)
                store.mark_block_done(stage_id, info.key, **record)
                processed += 1
            except Exception as err:  # one bad block must not kill the worker
                log.error("block %s of %s failed (attempt %d):\n%s", info.key, stage_id, attempt, traceback.format_exc())
                print(f"block {info.key} of {stage_id} failed: {_one_line(err)}", file=sys.stderr, flush=True)
                try:
                    record.update(duration=time.time() - started, error=_one_line(err))
                    store.mark_block_failed(stage_id, info.key, **record)
                except Exception:
                    log.exception("could not record the failure of block %s in the store", info.key)
                block.status = BlockStatus.FAILED
    stage.teardown() if hasattr(stage, "teardown") else None
    log.info("worker %s for %s done after %d blocks", worker_id, stage_id, processed)
    store.close()
    return processed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedseg_daisy.worker",
        description="Run one worker of a stage; the scheduler's address comes from DAISY_CONTEXT.",
    )
    parser.add_argument("--stage", required=True, help="stage id, e.g. predict or agglomerate_L1")
    parser.add_argument("config")
    args = parser.parse_args(argv)
    if "DAISY_CONTEXT" not in os.environ:
        print("error: DAISY_CONTEXT is not set; workers are started by the scheduler (python -m embedseg_daisy.run)", file=sys.stderr)
        return 2
    run_worker(args.config, args.stage)
    return 0
