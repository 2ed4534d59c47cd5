"""Service tests: workers and the scheduler killed with SIGKILL, lost chunks, resume.

Every disturbed run must end with outputs and store rows identical to the undisturbed
reference run (``service_helpers.reference_run``), with every block marked done
exactly once.  Faults are injected with ``EMBEDSEG_FAULT`` (see
``embedseg_daisy.pipeline.faults``): deterministic, once per run.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from embedseg_daisy.geometry import block_roi, parse_block_key
from embedseg_daisy.pipeline.driver import execute
from embedseg_daisy.pipeline.registry import build_stage
from embedseg_daisy.pipeline.stage import RunContext
from embedseg_daisy.store import open_store
from embedseg_daisy.volumes import chunk_paths

from service_helpers import (
    assert_all_done,
    assert_same_results,
    block_rows,
    cli,
    cli_env,
    fault_markers,
    group_alive,
    kill_group,
    prepare_run,
    reference_run,
    start_cli,
    wait_for,
)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_run(tmp_path_factory.getbasetemp())


# -- the fault-injection hook itself ------------------------------------------------------------------
def test_fault_hook_fires_once_per_run_and_only_where_asked(tmp_path, monkeypatch):
    from embedseg_daisy.pipeline.faults import InjectedFault, fault_point

    fault_point(tmp_path, "fragments", "0_0_0", "before_write")  # unset: a no-op
    monkeypatch.setenv("EMBEDSEG_FAULT", "fragments:0_1_0:after_write:raise, relabel:*:before_write:sleep=0")
    fault_point(tmp_path, "fragments", "0_1_0", "before_write")  # another point
    fault_point(tmp_path, "fragments", "0_0_0", "after_write")  # another block
    fault_point(tmp_path, "contacts", "0_1_0", "after_write")  # another stage
    with pytest.raises(InjectedFault, match="after_write of block 0_1_0 of fragments"):
        fault_point(tmp_path, "fragments", "0_1_0", "after_write")
    fault_point(tmp_path, "fragments", "0_1_0", "after_write")  # the retry passes
    fault_point(tmp_path, "relabel", "1_1_1", "before_write")
    fault_point(tmp_path, "relabel", "0_0_0", "before_write")  # '*' fired for 1_1_1 already
    markers = {p.name: p.read_text().split()[0] for p in (tmp_path / "faults").iterdir()}
    assert markers == {"fragments-0_1_0-after_write-raise": "0_1_0", "relabel-+-before_write-sleep=0": "1_1_1"}
    monkeypatch.setenv("EMBEDSEG_FAULT", "fragments:0_1_0:middle")
    with pytest.raises(ValueError, match="STAGE:BLOCK:POINT"):
        fault_point(tmp_path, "fragments", "0_1_0", "after_write")


# -- 1. kill -9 a worker mid-block ------------------------------------------------------------
KILLS = [
    "fragments:0_1_0:after_write",  # outputs written, not marked done
    "fragment_edges:*:before_write",  # nothing written yet
    "agglomerate_L1:*:after_write",
    "relabel:1_0_1:before_write",
    "contacts:*:after_write",
]


def test_worker_killed_mid_block_in_every_segmentation_stage(ref, tmp_path, monkeypatch):
    # one worker per stage: every kill is followed by a replacement worker
    cfg, path = prepare_run(tmp_path, "killw", ref["labels"], input_container=ref["input"], workers=1)
    monkeypatch.setenv("EMBEDSEG_FAULT", ",".join(KILLS))
    # daisy re-queues a killed worker's block and starts a replacement worker, so the
    # same run finishes (a re-run would also do: tests 2 and 3)
    outcome = execute(str(path), cfg, progress=False)
    assert outcome.ok, outcome.messages

    fired = fault_markers(cfg)
    assert len(fired) == len(KILLS), fired
    assert_all_done(cfg)
    assert_same_results(cfg, ref["cfg"])

    # each killed block was redone by a replacement worker, as its second attempt
    rows = {(r["stage"], r["block"]): r for r in block_rows(cfg)}
    for marker, text in fired.items():
        stage, block = marker.split("-")[0], text.split()[0]
        assert rows[(stage, block)]["attempt"] == 2, (marker, rows[(stage, block)])
    assert sum(r["attempt"] for r in rows.values()) == len(rows) + len(KILLS)
    # per-block records carry where and how long
    for row in rows.values():
        assert row["host"] and row["worker"] >= 0 and row["duration"] >= 0 and row["attempt"] >= 1
        assert row["roi_shape"] and row["error"] == ""
    # per-worker log files, including the killed workers' (the fault is logged first)
    logs = Path(str(cfg.output.container) + ".run") / "logs"
    text = "".join(p.read_text() for p in logs.glob("*.log"))
    assert text.count("injected fault: kill") == len(KILLS)
    assert {p.name.split("-worker")[0] for p in logs.glob("*.log")} >= {
        "fragments", "fragment_edges", "agglomerate_L1", "relabel", "contacts"
    }
    # the JSONL progress file: every task finished with all blocks, one worker restart each
    events = [json.loads(line) for line in (logs.parent / "progress.jsonl").read_text().splitlines()]
    finish = {e["task"]: e for e in events if e["event"] == "finish"}
    assert set(finish) == {"fragments", "fragment_edges", "agglomerate_L1", "relabel", "contacts"}
    assert all(e["completed"] == e["total"] and e["restarts"] == 1 for e in finish.values()), finish


# -- 2. kill -9 the scheduler, then resume ----------------------------------------------------------
@pytest.fixture(scope="module")
def resumed(ref, tmp_path_factory):
    """A run whose scheduler was SIGKILLed mid-run, then resumed by the same command."""
    tmp = tmp_path_factory.mktemp("killsched")
    cfg, path = prepare_run(tmp, "killsched", ref["labels"], input_container=ref["input"], workers=1)
    # every relabel block is slow: the kill lands after one relabel block, during the next
    slow = [f"relabel:{z}_{y}_{x}:before_write:sleep=3" for z in (0, 1) for y in (0, 1) for x in (0, 1)]
    env = cli_env(EMBEDSEG_FAULT=",".join(slow))
    proc = start_cli("run", path, "--no-progress", env=env, log=tmp / "run1.log")
    try:
        wait_for(lambda: len(fault_markers(cfg)) >= 2 or proc.poll() is not None, 120, "the second relabel block")
        assert proc.poll() is None, "the run ended before the kill: " + (tmp / "run1.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        # the workers notice the dead scheduler and exit by themselves
        wait_for(lambda: not group_alive(proc.pid), 30, "the workers of the killed scheduler to exit", poll=0.2)
        workers_gone_s = time.monotonic() - killed_at
    finally:
        kill_group(proc.pid)
    with open_store(cfg) as store:
        done_before = {r["stage"] + "/" + r["block"]: r["started"] for r in store.find("blocks", {"status": "done"})}
        plans = {p["stage"]: p["total_blocks"] for p in store.find("stages")}
    status_text = cli("status", path)
    status_json = cli("status", path, "--json")
    log_before = (Path(str(cfg.output.container) + ".run") / "progress.jsonl").read_text().splitlines()

    rerun = cli("run", path, "--no-progress")
    return dict(
        cfg=cfg, path=path, tmp=tmp, done_before=done_before, plans=plans, status_text=status_text,
        status_json=status_json, rerun=rerun, workers_gone_s=workers_gone_s, progress_lines_before=len(log_before),
    )


def test_scheduler_killed_run_resumes_without_recomputing(ref, resumed):
    cfg = resumed["cfg"]
    assert resumed["rerun"].returncode == 0, resumed["rerun"].stderr[-3000:]
    total = sum(resumed["plans"].values())
    assert 2 <= len(resumed["done_before"]) < total, "the kill must land mid-run"
    assert resumed["workers_gone_s"] < 30
    # blocks done before the kill were skipped, not recomputed: their records are unchanged
    with open_store(cfg) as store:
        after = {r["stage"] + "/" + r["block"]: r for r in store.find("blocks")}
    for key, started in resumed["done_before"].items():
        assert after[key]["status"] == "done" and after[key]["started"] == started, key
    # ... and the resumed run reported them as skipped (its finish events in the JSONL file)
    progress = Path(str(cfg.output.container) + ".run") / "progress.jsonl"
    events = [json.loads(line) for line in progress.read_text().splitlines()[resumed["progress_lines_before"]:]]
    finish = {e["task"]: e for e in events if e["event"] == "finish"}
    for stage, total_blocks in resumed["plans"].items():
        n_done = sum(1 for k in resumed["done_before"] if k.startswith(stage + "/"))
        assert finish[stage]["skipped"] == n_done, (stage, finish[stage], n_done)
        assert finish[stage]["completed"] == total_blocks
    assert 0 < finish["relabel"]["skipped"] < resumed["plans"]["relabel"], "relabel was cut mid-stage"
    assert_all_done(cfg)
    assert_same_results(cfg, ref["cfg"])


def test_status_reads_the_store_while_the_scheduler_is_dead(resumed):
    text, js = resumed["status_text"], resumed["status_json"]
    assert text.returncode == 0, text.stderr
    assert js.returncode == 0, js.stderr
    stages = {s["stage"]: s for s in json.loads(js.stdout)["stages"]}
    assert set(stages) == set(resumed["plans"])
    for stage, total in resumed["plans"].items():
        s = stages[stage]
        n_done = sum(1 for k in resumed["done_before"] if k.startswith(stage + "/"))
        assert (s["total"], s["done"], s["failed"]) == (total, n_done, 0), s
        assert set(s) >= {"rate_per_s", "eta_s"}
        if n_done == total:
            assert s["eta_s"] == 0.0
        elif s["rate_per_s"]:
            assert s["eta_s"] > 0
        assert f"{n_done:>6}/{total:<5}" in text.stdout
    assert stages["fragments"]["rate_per_s"] and stages["fragments"]["rate_per_s"] > 0
    relabel = stages["relabel"]
    assert 0 < relabel["done"] < relabel["total"]
    if relabel["rate_per_s"]:
        remaining = relabel["total"] - relabel["done"]
        assert relabel["eta_s"] == pytest.approx(remaining / relabel["rate_per_s"])
    header = text.stdout.splitlines()[0].split()
    assert header == ["stage", "done", "failed", "blocks/s", "eta"]


# -- 3. a done block whose chunk is lost ----------------------------------------------------------------
def test_verify_finds_lost_chunks_and_fix_makes_the_next_run_redo_them(ref, resumed):
    cfg, path = resumed["cfg"], resumed["path"]
    assert resumed["rerun"].returncode == 0
    ok = cli("verify", path)
    assert ok.returncode == 0 and "every block marked done has its chunks" in ok.stdout

    # a crash lost two chunks of blocks marked done (zarr does not fsync)
    run = RunContext(cfg, str(path))
    lost = {("relabel", "1_0_1", "segmentation"), ("fragments", "0_1_1", "fragments")}
    for stage_id, key, dataset in lost:
        stage = build_stage(run, stage_id)
        roi = block_roi(parse_block_key(key), stage.write_total_roi, stage.block_shape)
        (chunk,) = chunk_paths(run.open_output(dataset), roi)
        chunk.unlink()
    with open_store(cfg) as store:
        before = {r["stage"] + "/" + r["block"]: r["started"] for r in store.find("blocks")}

    found = cli("verify", path)
    assert found.returncode == 1, found.stdout + found.stderr
    for stage_id, key, dataset in lost:
        assert f"{stage_id} block {key}: {dataset}: 1 chunk(s) missing" in found.stdout
    fixed = cli("verify", path, "--fix")
    assert fixed.returncode == 0 and "cleared 2 done mark(s)" in fixed.stdout
    with open_store(cfg) as store:
        assert "1_0_1" not in store.done_blocks("relabel")
        assert "0_1_1" not in store.done_blocks("fragments")

    rerun = cli("run", path, "--no-progress")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert cli("verify", path).returncode == 0
    with open_store(cfg) as store:
        after = {r["stage"] + "/" + r["block"]: r["started"] for r in store.find("blocks")}
    redone = {k for k in after if after[k] != before[k]}
    assert redone == {"relabel/1_0_1", "fragments/0_1_1"}
    assert_all_done(cfg)
    assert_same_results(cfg, ref["cfg"])


# -- 8. observability: previews on a headless machine -------------------------------------------------
def test_view_writes_png_previews_headless(ref, tmp_path, monkeypatch):
    from embedseg_daisy.view import main as view_main

    monkeypatch.delenv("DISPLAY", raising=False)
    assert view_main([str(ref["path"]), "--png", str(tmp_path / "png")]) == 0
    pngs = sorted((tmp_path / "png").glob("section_*.png"))
    assert len(pngs) == 3
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000 for p in pngs)
