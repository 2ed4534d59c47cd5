"""Progress reporting: tqdm bars for people, a JSONL file for machines."""

from __future__ import annotations

import json
import time
from pathlib import Path


class ProgressObserver:
    """daisy progress observer: one bar per task and an appended JSONL progress file
    (one line per task at most every ``interval_s`` seconds, plus start and finish)."""

    def __init__(self, jsonl_path: Path, *, bars: bool = True, interval_s: float = 5.0):
        self.path = Path(jsonl_path)
        self.bars_enabled = bars
        self.interval_s = interval_s
        self._last = 0.0
        self._bars: dict = {}

    def _emit(self, event: str, states) -> None:
        now = time.time()
        if event == "progress" and now - self._last < self.interval_s:
            return
        self._last = now
        with open(self.path, "a") as f:
            for task_id, s in states.items():
                f.write(
                    json.dumps(
                        {
                            "t": now,
                            "event": event,
                            "task": task_id,
                            "total": int(s.total_block_count),
                            "completed": int(s.completed_count),
                            "skipped": int(s.skipped_count),
                            "processing": int(s.processing_count),
                            "failed": int(s.failed_count),
                            "orphaned": int(s.orphaned_count),
                            "restarts": int(s.worker_restart_count),
                        }
                    )
                    + "\n"
                )

    def record_done_before(self, stage) -> None:
        """A stage that a resumed run skips altogether (every block done before):
        one ``finish`` line with every block skipped."""
        n = int(stage.total_blocks)
        with open(self.path, "a") as f:
            f.write(
                json.dumps(
                    {
                        "t": time.time(),
                        "event": "finish",
                        "task": stage.stage_id,
                        "total": n,
                        "completed": n,
                        "skipped": n,
                        "processing": 0,
                        "failed": 0,
                        "orphaned": 0,
                        "restarts": 0,
                        "done_before": True,
                    }
                )
                + "\n"
            )

    def _update_bars(self, states, final: bool = False) -> None:
        if not self.bars_enabled:
            return
        from tqdm.auto import tqdm

        for task_id, s in states.items():
            bar = self._bars.get(task_id)
            if bar is None:
                bar = self._bars[task_id] = tqdm(total=int(s.total_block_count), desc=task_id, unit="block", leave=True)
            done = int(s.completed_count)
            if done > bar.n:
                bar.update(done - bar.n)
            bar.set_postfix({"run": int(s.processing_count), "fail": int(s.failed_count)}, refresh=False)
            if final:
                bar.close()

    def on_start(self, states):
        self._emit("start", states)
        self._update_bars(states)

    def on_progress(self, states):
        self._emit("progress", states)
        self._update_bars(states)

    def on_finish(self, states):
        self._emit("finish", states)
        self._update_bars(states, final=True)
