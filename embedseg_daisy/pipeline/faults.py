"""Test-only fault injection for workers: ``EMBEDSEG_FAULT``.

The service tests kill, stall or break a worker at a chosen point of a chosen block
to check that a run recovers (or stops with a clear error).  Unset (the normal case),
every hook is a no-op costing one environment lookup.

``EMBEDSEG_FAULT`` is a comma-separated list of ``STAGE:BLOCK:POINT[:ACTION]``:

``STAGE``
    a stage id (``predict``, ``fragments``, ``agglomerate_L1``, ``mea``, ...).
``BLOCK``
    a block key ``z_y_x`` or ``*`` (the first block of the stage that gets there).
``POINT``
    ``before_write``: the block was acquired, nothing written yet;
    ``after_write``: the block's outputs are written, it is not marked done yet;
    ``leased`` (mea): candidates were leased, none decided yet.
``ACTION``
    ``kill`` (default): ``SIGKILL`` the worker process itself;
    ``raise``: raise an exception (a failed block attempt);
    ``sleep=S``: sleep ``S`` seconds, then carry on;
    ``hang``: sleep until the process is killed.

Each fault fires **once per run**: the first process to reach it creates the marker
file ``<run dir>/faults/<STAGE>-<BLOCK>-<POINT>-<ACTION>`` (exclusive create),
holding the block key and the pid; every later arrival (a retry, another worker)
finds the marker and carries on.  Tests read the markers to learn what fired.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from pathlib import Path

ENV = "EMBEDSEG_FAULT"
POINTS = ("before_write", "after_write", "leased")

log = logging.getLogger("embedseg_daisy.worker")


class InjectedFault(RuntimeError):
    """The exception a ``raise`` fault raises."""


def _specs(text: str) -> list[tuple[str, str, str, str]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (3, 4) or parts[2] not in POINTS:
            raise ValueError(f"{ENV}: cannot parse {item!r}; expected STAGE:BLOCK:POINT[:ACTION], POINT in {POINTS}")
        out.append((parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else "kill"))
    return out


def _flush_logs() -> None:
    for handler in logging.getLogger("embedseg_daisy").handlers:
        try:
            handler.flush()
        except Exception:
            pass


def fault_point(run_dir: str | os.PathLike, stage_id: str, block_key: str, point: str) -> None:
    """Fire the fault configured for (stage, block, point), if any and not fired yet."""
    text = os.environ.get(ENV)
    if not text:
        return
    for stage, block, where, action in _specs(text):
        if stage != stage_id or where != point or block not in ("*", block_key):
            continue
        marker_dir = Path(run_dir) / "faults"
        marker_dir.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.=-]", "+", f"{stage}-{block}-{where}-{action}")
        try:
            fd = os.open(marker_dir / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{block_key} {os.getpid()}\n")
        log.warning("injected fault: %s at %s of block %s of %s (pid %d)", action, point, block_key, stage_id, os.getpid())
        _flush_logs()
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "raise":
            raise InjectedFault(f"injected fault at {point} of block {block_key} of {stage_id}")
        elif action.startswith("sleep="):
            time.sleep(float(action.split("=", 1)[1]))
        elif action == "hang":
            while True:
                time.sleep(1.0)
        else:
            raise ValueError(f"{ENV}: unknown action {action!r}")
