"""Scheduler + store overhead per block: no-op blocks through daisy and our worker loop.

    python benchmarks/overhead.py                                   # 10^4 blocks SQLite, 10^4 mongoeco
    python benchmarks/overhead.py --blocks 10000,100000 --mongo-blocks 10000 --workers 2

A stage whose ``process`` does nothing, on a grid of 1-voxel blocks, runs through the
same machinery as every real stage: a ``daisy.Task`` built like ``driver.make_task``
(skip mask from the store, ``fit="shrink"``, no read/write conflict), worker processes
started by daisy, and in each worker our loop (``embedseg_daisy.pipeline.worker``): per
block an attempt lookup, a ``running`` row, ``process``, the ``done`` row.  Variants:

* ``daisy_only`` -- workers that only acquire and release blocks (no store): the
  scheduler's own cost;
* ``sqlite`` -- our worker loop with the SQLite store (WAL, one file);
* ``mongoeco`` -- our worker loop over the MongoDB wire protocol to a ``mongoeco`` server
  (``tests/store_servers.py``).  mongoeco is a slow in-memory *stand-in* (milliseconds
  per document): its numbers bound the wire path's cost here, not MongoDB's speed;
* ``resume`` -- the same command again when every block is done: the skip mask is read
  from the store and no worker gets a block.

Reported: wall time, blocks per second, and milliseconds per block per worker
(wall x workers / blocks), medians over repeats.  Results:
``benchmarks/results/overhead.json`` and a line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from embedseg_daisy.pipeline.stage import Stage  # noqa: E402


class NoOp(Stage):
    name = "noop"

    def __init__(self, run, graph="mws"):
        super().__init__(run)

    @property
    def workers(self):
        return self.cfg.segment

    @property
    def block_shape(self):
        return (1, 1, 1)

    def process(self, block):
        return None


def stages(run, graph):
    return [NoOp(run, graph)]


class Launcher:
    """daisy process function: our worker loop (``store``) or a bare acquire loop."""

    def __init__(self, config: str, mode: str):
        self.config = config
        self.mode = mode

    def __call__(self, *, context=None):
        if self.mode == "daisy_only":
            import daisy.v2 as daisy

            client = daisy.Client(context) if context is not None else daisy.Client()
            while True:
                with client.acquire_block() as block:
                    if block is None:
                        break
            return
        from embedseg_daisy.pipeline import registry
        from embedseg_daisy.pipeline.worker import run_worker

        registry._FACTORIES["noop"] = "overhead:stages"
        run_worker(self.config, "noop", context)


def make_input(n_blocks: int) -> tuple[Path, tuple[int, int, int]]:
    from funlib.geometry import Roi

    from embedseg_daisy.volumes import prepare_volume

    if n_blocks >= 10_000:
        shape = (max(1, n_blocks // 10_000), 100, 100)
    else:
        shape = (1, 10, max(1, n_blocks // 10))
    path = C.WORK / "overhead" / f"input-{'x'.join(map(str, shape))}.zarr"
    if not path.exists():
        raw = prepare_volume(str(path), "raw", roi=Roi((0, 0, 0), shape), voxel_size=C.VOXEL_SIZE, dtype=np.uint8,
                             chunk_shape=shape)  # noqa: E501
        raw.write(Roi((0, 0, 0), shape), np.zeros(shape, np.uint8))
    return path, shape


def one_run(n_blocks: int, mode: str, workers: int, store_cfg: dict, tag: str, resume: bool = False) -> dict:
    import daisy.v2 as daisy

    from embedseg_daisy.config import load_config
    from embedseg_daisy.pipeline.driver import skip_mask
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.store import open_store

    inp, shape = make_input(n_blocks)
    run_dir = C.WORK / "overhead" / tag
    if not resume:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        cfg = {
            "name": "overhead",
            "input": {"container": str(inp), "voxel_size_nm": list(C.VOXEL_SIZE)},
            "output": {"container": str(run_dir / "output.zarr")},
            "predict": {"checkpoint": "unused.pt"},
            "segment": {"workers": workers, "max_retries": 0},
            "store": store_cfg,
            "stages": ["fragments"],
        }
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=1))
    config = run_dir / "config.json"
    parsed = load_config(config)
    t0 = time.perf_counter()
    run = RunContext(parsed, str(config))
    stage = NoOp(run)
    store = open_store(parsed)
    total, read, write = stage.task_rois()
    mask = skip_mask(stage, store)
    t_mask = time.perf_counter() - t0
    from daisy import logging as daisy_logging

    daisy_logging.set_log_basedir(str(run.run_dir / "daisy_logs"))
    task = daisy.Task("noop", total, read, write, process_function=Launcher(str(config), mode),
                      read_write_conflict=False, fit="shrink", max_workers=workers, max_retries=0,
                      timeout=600, skip_mask=mask)
    states = daisy.run_blockwise([task], progress=False, return_states=True, summary=False)
    wall = time.perf_counter() - t0
    st = states["noop"]
    done = store.count("blocks", {"stage": "noop", "status": "done"}) if mode != "daisy_only" else None
    store.close()
    return {"blocks": int(np.prod(shape)), "completed": int(st.completed_count), "skipped": int(st.skipped_count),
            "wall_s": wall, "skip_mask_s": t_mask, "done_rows": done}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", default="10000,100000", help="comma list of block counts (multiples of 10^4)")
    ap.add_argument("--mongo-blocks", default="1000,10000", help="block counts for the mongoeco wire path ('' to skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="repeats for runs below 50,000 blocks")
    ap.add_argument("--big-repeats", type=int, default=1, help="repeats for runs of 50,000 blocks or more")
    ap.add_argument("--mongo-repeats", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    sizes = [int(v) for v in args.blocks.split(",") if v]
    msizes = [int(v) for v in args.mongo_blocks.split(",") if v]
    report = {"benchmark": "scheduler + store overhead, no-op blocks", "command": C.command_line(),
              "machine": C.machine(), "workers": args.workers, "repeats": args.repeats, "results": []}

    def record(n, variant, rs):
        wall = C.median([r["wall_s"] for r in rs])
        row = {"blocks": n, "variant": variant, "wall_s": wall, "wall_s_runs": [r["wall_s"] for r in rs],
               "blocks_per_s": n / wall, "ms_per_block_per_worker": 1e3 * wall * args.workers / n,
               "skip_mask_s": C.median([r["skip_mask_s"] for r in rs]),
               "completed": rs[0]["completed"], "skipped": rs[0]["skipped"], "done_rows": rs[0]["done_rows"]}
        report["results"].append(row)
        print(f"  {n:7d} blocks {variant:10s}: {wall:7.1f} s, {row['blocks_per_s']:7.0f} blocks/s, "
              f"{row['ms_per_block_per_worker']:6.2f} ms/block/worker (skip mask {row['skip_mask_s']:.2f} s; "
              f"completed {row['completed']}, skipped {row['skipped']})", flush=True)
        return row

    for n in sizes:
        reps = args.repeats if n < 50_000 else args.big_repeats
        for variant in ("daisy_only", "sqlite"):
            rs = []
            for rep in range(reps):
                rs.append(one_run(n, variant, args.workers, {"backend": "sqlite"}, f"{variant}-{n}"))
            record(n, variant, rs)
        rs = [one_run(n, "store", args.workers, {"backend": "sqlite"}, f"sqlite-{n}", resume=True) for _ in range(reps)]
        record(n, "sqlite_resume", rs)
    if msizes:
        sys.path.insert(0, str(C.ROOT / "tests"))
        from store_servers import MongoEcoServer, find_mongoeco_python

        py, reason = find_mongoeco_python()
        if py is None:
            report["mongoeco"] = f"skipped: {reason}"
            print(f"  mongoeco skipped: {reason}")
        else:
            with MongoEcoServer(py) as server:
                for n in msizes:
                    rs = []
                    for rep in range(args.mongo_repeats):
                        db = f"overhead_{n}_{rep}_{os.getpid()}"
                        rs.append(one_run(n, "store", args.workers, {"backend": "mongodb", "uri": server.uri,
                                                                       "database": db}, f"mongoeco-{n}"))
                    record(n, "mongoeco", rs)
                    rs = [one_run(n, "store", args.workers, {"backend": "mongodb", "uri": server.uri, "database": db},
                                  f"mongoeco-{n}", resume=True)]
                    record(n, "mongoeco_resume", rs)
            report["mongoeco_note"] = ("mongoeco is a MongoDB wire-protocol stand-in (Python, in-memory, milliseconds "
                                       "per document); these rows measure the wire path with that stand-in, not MongoDB")
    # marginal cost per block: the slope between the smallest and largest run of a variant
    # (worker start-up and the skip mask are fixed costs per run)
    marginal = {}
    for variant in {r["variant"] for r in report["results"]}:
        rows = sorted((r for r in report["results"] if r["variant"] == variant), key=lambda r: r["blocks"])
        if len(rows) >= 2 and rows[-1]["blocks"] > rows[0]["blocks"]:
            a, b = rows[0], rows[-1]
            slope = (b["wall_s"] - a["wall_s"]) / (b["blocks"] - a["blocks"])
            marginal[variant] = {"ms_per_block_wall": 1e3 * slope, "ms_per_block_per_worker": 1e3 * slope * args.workers,
                                 "blocks_per_s": 1 / slope if slope > 0 else None,
                                 "fixed_s": a["wall_s"] - slope * a["blocks"], "between": [a["blocks"], b["blocks"]]}
    report["marginal"] = marginal
    for k, m in marginal.items():
        print(f"  marginal {k}: {m['ms_per_block_wall']:.2f} ms/block wall ({m['blocks_per_s'] or 0:.0f} blocks/s), "
              f"fixed {m['fixed_s']:.1f} s per run")
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    big = max(sizes) if sizes else None
    parts = []
    for r in report["results"]:
        if r["blocks"] == big or r["variant"].startswith("mongoeco"):
            parts.append(f"{r['variant']} {r['blocks']}: {r['blocks_per_s']:.0f} blocks/s "
                         f"({r['ms_per_block_per_worker']:.1f} ms/block/worker)")
    for k, m in marginal.items():
        if m["blocks_per_s"]:
            parts.append(f"marginal {k} {m['blocks_per_s']:.0f} blocks/s + {m['fixed_s']:.1f} s fixed")
    C.save("overhead", report, f"{args.workers} workers: " + "; ".join(parts), out=args.out)


if __name__ == "__main__":
    main()
