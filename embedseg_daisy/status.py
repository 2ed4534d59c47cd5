"""Where a run stands, from the store alone: ``python -m embedseg_daisy.status CONFIG``.

Works while the run is going and after it died.  Per stage: blocks done / total,
failed, rate over the last ``--window`` seconds of finished blocks, and ETA; for
mean-embedding agglomeration the candidates pending / leased / decided.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

from .config import load_config
from .errors import EmbedsegError
from .store import Store, open_store


@dataclass
class StageStatus:
    stage: str
    total: int
    done: int
    failed: int
    rate_per_s: float | None
    eta_s: float | None
    last_error: str | None


def stage_status(store: Store, window_s: float = 600.0, now: float | None = None) -> list[StageStatus]:
    now = time.time() if now is None else now
    plans = store.find("stages", order_by=["stage"])
    out: list[StageStatus] = []
    for plan in plans:
        stage = plan["stage"]
        rows = store.find("blocks", {"stage": stage}, fields=["status", "started", "duration", "error"])
        done = [r for r in rows if r["status"] == "done"]
        failed = [r for r in rows if r["status"] == "failed"]
        finished = sorted((r["started"] or 0) + (r["duration"] or 0) for r in done)
        recent = [t for t in finished if t >= now - window_s]
        rate = None
        if len(recent) >= 2 and recent[-1] > recent[0]:
            rate = (len(recent) - 1) / (recent[-1] - recent[0])
        elif len(finished) >= 2 and finished[-1] > finished[0]:
            rate = (len(finished) - 1) / (finished[-1] - finished[0])
        remaining = int(plan["total_blocks"]) - len(done)
        eta = remaining / rate if rate and remaining > 0 else (0.0 if remaining == 0 else None)
        out.append(
            StageStatus(
                stage=stage,
                total=int(plan["total_blocks"]),
                done=len(done),
                failed=len(failed),
                rate_per_s=rate,
                eta_s=eta,
                last_error=(failed[-1]["error"] if failed else None),
            )
        )
    return out


def candidate_status(store: Store) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for seg in sorted({r["segmentation"] for r in store.find("candidates", fields=["segmentation"])}):
        out[seg] = {k: int(v) for k, v in store.count_by("candidates", "status", {"segmentation": seg}).items()}
    return out


def _fmt_eta(eta: float | None) -> str:
    if eta is None:
        return "?"
    if eta < 90:
        return f"{eta:.0f}s"
    if eta < 5400:
        return f"{eta / 60:.0f}m"
    return f"{eta / 3600:.1f}h"


def format_status(stages: list[StageStatus], candidates: dict[str, dict[str, int]]) -> str:
    lines = [f"{'stage':<24} {'done':>12} {'failed':>7} {'blocks/s':>9} {'eta':>7}"]
    for s in stages:
        rate = f"{s.rate_per_s:.2f}" if s.rate_per_s else "-"
        lines.append(f"{s.stage:<24} {s.done:>6}/{s.total:<5} {s.failed:>7} {rate:>9} {_fmt_eta(s.eta_s):>7}")
        if s.failed and s.last_error:
            lines.append(f"    last error: {s.last_error}")
    for seg, counts in candidates.items():
        parts = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("pending", "leased", "decided"))
        lines.append(f"candidates[{seg}]: {parts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedseg_daisy.status", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--window", type=float, default=600.0, help="seconds of history for rates")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if cfg.store.backend == "sqlite" and not cfg.store_path().exists():
            print(f"no store at {cfg.store_path()}: the run has not started", file=sys.stderr)
            return 1
        store = open_store(cfg)
        store.ping()
        stages = stage_status(store, args.window)
        cands = candidate_status(store)
        store.close()
    except EmbedsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"stages": [asdict(s) for s in stages], "candidates": cands}, indent=2))
    else:
        print(format_status(stages, cands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
