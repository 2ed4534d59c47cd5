"""Service tests: the store unreachable at start, and the store dropping mid-run.

Unreachable at start: a clear one-line error, exit status 3, no credentials printed,
nothing written.  Dropping mid-run (a MongoDB store behind a TCP proxy the test cuts):
blocks that cannot be marked done fail and are retried, no block is marked done
without its data, and once the store is back a re-run of the same command finishes
with the undisturbed run's results.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from embedseg_daisy.config import results_hash
from embedseg_daisy.run import main as run_main
from embedseg_daisy.status import main as status_main
from embedseg_daisy.store import open_store
from embedseg_daisy.volumes import claim_output

from pipeline_helpers import write_config
from service_helpers import (
    cli,
    cli_env,
    fault_markers,
    prepare_run,
    read_array,
    reference_run,
    start_cli,
    wait_for,
)
from store_servers import drop_database, fresh_database_name, mongoeco_uri, real_mongodb_uri

PASSWORD = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_run(tmp_path_factory.getbasetemp())


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- unreachable at start ----------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["config", "env"])
def test_store_unreachable_at_start(ref, tmp_path, monkeypatch, capsys, via):
    uri = f"mongodb://embedseg:{PASSWORD}@127.0.0.1:{closed_port()}/?authSource=admin"
    data = json.loads(Path(ref["path"]).read_text())
    data["output"]["container"] = str(tmp_path / "out.zarr")
    data["store"] = {"backend": "mongodb", "timeout_s": 1.0}
    if via == "config":
        data["store"]["uri"] = uri
    else:
        data["store"]["uri_env"] = "TEST_STORE_URI"
        monkeypatch.setenv("TEST_STORE_URI", uri)
    path = write_config(tmp_path / "cfg.json", data)

    code = run_main([str(path), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 3, err
    err = err.strip()
    assert err.startswith("error: cannot reach MongoDB at 127.0.0.1:") and "\n" not in err, err
    assert PASSWORD not in out + err and "embedseg:" not in out + err
    assert not (tmp_path / "out.zarr").exists(), "nothing may be written when the store is unreachable"

    code = status_main([str(path)])
    out, err = capsys.readouterr()
    assert code != 0 and "cannot reach MongoDB" in err and PASSWORD not in out + err


# -- drops mid-run -------------------------------------------------------------------------------------------
class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server; ``drop()`` closes every connection and
    stops listening (clients get 'connection refused'), ``restore()`` listens again on
    the same port."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = closed_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def _mongo_uri() -> str:
    uri = real_mongodb_uri()
    if uri is None:
        uri, reason = mongoeco_uri()
        if uri is None:
            pytest.skip(reason)
    return uri


@pytest.mark.mongo
def test_store_drops_mid_run(ref, tmp_path):
    """``relabel_mea`` (segments -> segments after mean-embedding merges, read from the
    store) with MongoDB behind a proxy that the test cuts while block 1_1_1 sits between
    writing its output and being marked done.  The stage writes few rows: the MongoDB
    stand-in used here (mongoeco) is slow per document."""
    import pymongo

    server_uri = _mongo_uri()
    host, port = pymongo.uri_parser.parse_uri(server_uri)["nodelist"][0]
    proxy = TcpProxy((host, port))
    proxy.restore()
    database = fresh_database_name()
    proxied = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
    try:
        cfg, path = prepare_run(
            tmp_path, "dropped", ref["labels"], input_container=ref["input"], stages=["relabel_mea"],
            store={"backend": "mongodb", "uri": proxied, "database": database, "timeout_s": 3.0},
            workers=1, relabel__max_retries=1, oracle=False,
        )
        out = Path(cfg.output.container)
        claim_output(str(out), cfg.name, results_hash(cfg))
        shutil.copytree(Path(ref["cfg"].output.container) / "segmentation", out / "segmentation")
        # one decided merge for the stage to apply; the undisturbed result follows directly
        seg = read_array(ref["cfg"], "segmentation")
        ids, sizes = np.unique(seg[seg > 0], return_counts=True)
        s1, s2 = sorted(int(i) for i in ids[np.argsort(sizes)[-2:]])
        expected = np.where(seg == s2, s1, seg).astype(seg.dtype)
        with open_store(cfg) as store:
            store.put("candidates", [{"segmentation": "segmentation", "s1": s1, "s2": s2, "centroid": [0, 0, 0],
                                      "status": "decided", "merge": 1, "attempts": 1}])

        env = cli_env(EMBEDSEG_FAULT="relabel_mea:1_1_1:after_write:sleep=3")
        proc = start_cli("run", path, "--no-progress", env=env, log=tmp_path / "run1.log")
        try:
            wait_for(lambda: fault_markers(cfg) or proc.poll() is not None, 120, "block 1_1_1 to be written")
            assert fault_markers(cfg), "the run ended before the fault: " + (tmp_path / "run1.log").read_text()[-3000:]
            proxy.drop()
            code = proc.wait(180)
        finally:
            if proc.poll() is None:
                proc.kill()
        log = (tmp_path / "run1.log").read_text()
        assert code == 1, log[-3000:]
        assert "relabel_mea:" in log and "blocks not done" in log and "re-run the same command" in log, log[-3000:]

        # on the server itself (not through the proxy): the block whose done mark could
        # not be written is not done, and every block marked done has its output
        direct = pymongo.MongoClient(server_uri, serverSelectionTimeoutMS=5000)[database]
        blocks = {d["block"]: d for d in direct["blocks"].find({"stage": "relabel_mea"})}
        done = {k for k, d in blocks.items() if d["status"] == "done"}
        assert "1_1_1" not in done and len(done) < 8
        got = read_array(cfg, "segmentation_mea")
        for key in done:
            z, y, x = (int(v) for v in key.split("_"))
            box = np.s_[z * 6 : z * 6 + 6, y * 48 : y * 48 + 48, x * 48 : x * 48 + 48]
            assert np.array_equal(got[box], expected[box]), key

        proxy.restore()
        rerun = cli("run", path, "--no-progress")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert np.array_equal(read_array(cfg, "segmentation_mea"), expected)
        statuses = {d["block"]: d["status"] for d in direct["blocks"].find({"stage": "relabel_mea"})}
        assert statuses == {f"{z}_{y}_{x}": "done" for z in (0, 1) for y in (0, 1) for x in (0, 1)}
        assert blocks["1_1_1"]["attempt"] < direct["blocks"].find_one({"stage": "relabel_mea", "block": "1_1_1"})["attempt"]
    finally:
        proxy.drop()
        with contextlib.suppress(Exception):
            drop_database(server_uri, database)
