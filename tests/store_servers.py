"""MongoDB-compatible servers for the store tests.

``mongoeco`` (PyPI, Python >= 3.13, installed as ``mongoeco[wire]``) serves the
MongoDB wire protocol on loopback so the real pymongo can talk to it.  It is a
**test stand-in, not a production store**: slow (milliseconds per document),
in-memory here, single-authored.  Production runs use a real MongoDB server; set
``EMBEDSEG_TEST_MONGODB_URI`` to run the same tests against one.

The mongoeco server runs in a separate interpreter (the project's Python may be
older than 3.13), found in this order:

1. ``$EMBEDSEG_MONGOECO_PYTHON``
2. ``<repo>/.venv-mongoeco/bin/python``
3. ``/work/venv313/bin/python``

The first one that can import ``mongoeco.wire`` is used; if none can, the mongoeco
tests are skipped with the reason.  One server is started per test session (lazily,
on first use) and terminated at interpreter exit; the launcher also exits by itself
when the process that started it goes away.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV_PYTHON = "EMBEDSEG_MONGOECO_PYTHON"
ENV_REAL_URI = "EMBEDSEG_TEST_MONGODB_URI"

_LAUNCHER = r"""
import asyncio, json, os, sys
from mongoeco.wire import AsyncMongoEcoProxyServer

async def _watch_parent(parent):
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)

async def main():
    parent = os.getppid()
    kwargs = {}
    users = json.loads(os.environ.get("EMBEDSEG_MONGOECO_USERS") or "[]")
    if users:
        from mongoeco.wire import WireAuthUser
        kwargs["auth_users"] = tuple(WireAuthUser(u, p) for u, p in users)
    server = AsyncMongoEcoProxyServer(host="127.0.0.1", port=0, **kwargs)
    address = await server.start()
    print(address.uri, flush=True)
    await _watch_parent(parent)

asyncio.run(main())
"""


def candidate_pythons() -> list[str]:
    out = []
    env = os.environ.get(ENV_PYTHON)
    if env:
        out.append(env)
    out.append(str(REPO / ".venv-mongoeco" / "bin" / "python"))
    out.append("/work/venv313/bin/python")
    return out


def find_mongoeco_python() -> tuple[str | None, str]:
    """``(interpreter, "")`` for the first interpreter that imports ``mongoeco.wire``,
    else ``(None, reason)``."""
    tried = []
    for py in candidate_pythons():
        if not os.path.exists(py):
            tried.append(f"{py} (missing)")
            continue
        try:
            r = subprocess.run(
                [py, "-c", "import mongoeco.wire"], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            tried.append(f"{py} ({type(e).__name__})")
            continue
        if r.returncode == 0:
            return py, ""
        last = (r.stderr.strip().splitlines() or ["import failed"])[-1]
        tried.append(f"{py} ({last})")
    return None, (
        "mongoeco (a MongoDB wire-protocol test stand-in, Python >= 3.13, "
        f"`pip install 'mongoeco[wire]'`) is not available; set ${ENV_PYTHON}. Tried: "
        + "; ".join(tried)
    )


class MongoEcoServer:
    """A mongoeco wire server in a subprocess (a test stand-in, not a production store)."""

    def __init__(self, python: str, users: list[tuple[str, str]] | None = None) -> None:
        """``users``: ``(name, password)`` pairs that SCRAM login accepts (none: no auth)."""
        self.python = python
        self.users = list(users or [])
        self.uri: str | None = None
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.mkdtemp(prefix="mongoeco-")
        self._out = os.path.join(self._dir, "stdout.txt")
        self._err = os.path.join(self._dir, "stderr.txt")

    def start(self, timeout_s: float = 60.0) -> str:
        os.makedirs(self._dir, exist_ok=True)  # stop() removes it
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            env = dict(os.environ, EMBEDSEG_MONGOECO_USERS=json.dumps(self.users))
            self.proc = subprocess.Popen(
                [self.python, "-c", _LAUNCHER], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(self._out) as f:
                raw = f.readline()
            line = raw.strip()
            if raw.endswith("\n") and line.startswith("mongodb://"):
                self.uri = line
                return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        err = Path(self._err).read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"mongoeco server did not start ({self.python}): {err}")

    def stop(self) -> None:
        """Stop the server and remove its log folder (a start failure has already
        reported the logs' tail)."""
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> MongoEcoServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_server: MongoEcoServer | None = None
_server_error: str | None = None
_server_lock = threading.Lock()


def mongoeco_uri() -> tuple[str | None, str]:
    """URI of this session's mongoeco server (started on first call), or ``(None, reason)``."""
    global _server, _server_error
    with _server_lock:
        if _server is not None and _server.proc is not None and _server.proc.poll() is None:
            return _server.uri, ""
        if _server_error is not None:
            return None, _server_error
        py, reason = find_mongoeco_python()
        if py is None:
            _server_error = reason
            return None, reason
        server = MongoEcoServer(py)
        try:
            server.start()
        except RuntimeError as e:
            _server_error = str(e)
            return None, _server_error
        _server = server
        atexit.register(server.stop)
        return server.uri, ""


def stop_mongoeco() -> None:
    global _server
    with _server_lock:
        if _server is not None:
            _server.stop()
            _server = None


def real_mongodb_uri() -> str | None:
    """``$EMBEDSEG_TEST_MONGODB_URI`` (a real MongoDB server for the tests), if set."""
    return os.environ.get(ENV_REAL_URI) or None


#: one prefix per test session; every test database gets a fresh suffix
SESSION_PREFIX = f"edt_{uuid.uuid4().hex[:8]}"


def fresh_database_name() -> str:
    return f"{SESSION_PREFIX}_{uuid.uuid4().hex[:10]}"


def drop_database(uri: str, name: str) -> None:
    import pymongo

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    finally:
        client.close()


def backend_store(kind: str, tmp_path):
    """``(store, cleanup)`` for ``kind`` in ``sqlite | mongoeco | mongodb``; calls
    ``pytest.skip`` when the backend is not available."""
    import pytest

    if REPO.as_posix() not in sys.path:
        sys.path.insert(0, REPO.as_posix())
    if kind == "sqlite":
        from embedseg_daisy.store.sqlite import SQLiteStore

        store = SQLiteStore(tmp_path / "store.sqlite")
        return store, store.close
    if kind == "mongoeco":
        uri, reason = mongoeco_uri()
        if uri is None:
            pytest.skip(reason)
    elif kind == "mongodb":
        uri = real_mongodb_uri()
        if uri is None:
            pytest.skip(f"set ${ENV_REAL_URI} to run the store tests against a real MongoDB server")
    else:
        raise ValueError(kind)
    from embedseg_daisy.store.mongo import MongoStore

    name = fresh_database_name()
    store = MongoStore(uri, name, connect_timeout_s=10.0)

    def cleanup() -> None:
        store.close()
        drop_database(uri, name)

    return store, cleanup
