"""Mean-embedding agglomeration (MEA) on CPU: seconds per candidate.

    python benchmarks/mea.py                              # 32x256x256, up to 24 candidates
    python benchmarks/mea.py --checkpoint checkpoints/embedding_tiny.pt --max-candidates 64

The segmentation, contacts and self-touch candidates of a synthetic volume are made once
(untimed) by the real pipeline on oracle affinities; the net is the ``tiny`` embedding
net (the shipped checkpoint when present, else a randomly initialised one: the timing
does not depend on the weights).  Each in a fresh process, repeated:

* ``stage``: the MEA stage's own loop (``MEA.setup`` then ``process``: lease 4
  candidates at a time from the store, read raw around the best contact, forward, read
  the segmentation, decide, complete the lease) over every candidate, reset to pending
  before each repeat;
* ``decide``: ``MEA.decide`` per candidate (read, forward, decision; no store);
* ``forward_b1`` / ``forward_bN``: the bare forward on the same input patches, one at a
  time and in batches of ``--batch`` -- what batching candidates could save on this CPU.

Results: ``benchmarks/results/mea.json`` and a line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def tiny_checkpoint(explicit: str | None) -> tuple[Path, str]:
    if explicit:
        return Path(explicit), "given"
    shipped = C.ROOT / "checkpoints" / "embedding_tiny.pt"
    if shipped.exists():
        return shipped, "shipped"
    path = C.WORK / "tiny_random.pt"
    if not path.exists():
        import torch

        from embedseg_daisy.nn.checkpoint import save_checkpoint
        from embedseg_daisy.nn.presets import get_preset
        from embedseg_daisy.nn.rsunet import build_model

        torch.manual_seed(0)
        spec = get_preset("tiny")
        save_checkpoint(path, build_model(spec), spec)
    return path, "random init"


def child(config: Path, mode: str, max_candidates: int, batch: int) -> dict:
    import torch
    from funlib.geometry import Coordinate, Roi

    from embedseg_daisy.config import load_config
    from embedseg_daisy.mea import patch_box_around
    from embedseg_daisy.pipeline.registry import build_stage
    from embedseg_daisy.pipeline.stage import BlockInfo, RunContext
    from embedseg_daisy.store import open_store

    cfg = load_config(config)
    run = RunContext(cfg, str(config))
    store = open_store(cfg)
    where = {"segmentation": "segmentation"}
    cands = store.find("candidates", where, order_by=["s1", "s2"])[:max_candidates]
    if mode == "stage":
        # only the first max_candidates are pending; the rest count as decided
        keep = {(c["s1"], c["s2"]) for c in cands}
        rows = []
        for c in store.find("candidates", where):
            pending = (c["s1"], c["s2"]) in keep
            rows.append({**c, "status": "pending" if pending else "decided", "lease_owner": "", "lease_expires": 0.0,
                         **({"merge": None, "distance": None, "reason": None, "attempts": 0} if pending else {})})
        store.put("candidates", rows)  # a row is replaced as a whole: every field is given
    t = time.perf_counter()
    stage = build_stage(run, "mea")
    stage.setup()
    setup_s = time.perf_counter() - t
    threads = torch.get_num_threads()
    # warm-up: one decision (oneDNN primitives, numba caches)
    stage.decide(cands[0])
    c0, t0 = time.process_time(), time.perf_counter()
    extra = {}
    if mode == "stage":
        info = BlockInfo(key="0_0_0", index=(0, 0, 0), write_roi=Roi((0, 0, 0), (1, 1, 1)))
        stage.process(info)
        extra["decided"] = store.count("candidates", {**where, "status": "decided"})
        extra["merges"] = store.count("candidates", {**where, "status": "decided", "merge": 1})
    elif mode == "decide":
        for c in cands:
            stage.decide(c)
    else:
        raw_roi = stage.raw.roi
        xs = []
        for c in cands:
            centroid = np.asarray(c["centroid"], np.float64) - np.asarray(raw_roi.begin, np.float64)
            boxes = patch_box_around(centroid, tuple(stage.spec.input_shape), tuple(raw_roi.shape),
                                     output_shape=tuple(stage.spec.output_crop), focal_shape=tuple(cfg.mea.focal_window_vox))
            (ib, ie), _ = boxes.input_box, boxes.output_box
            roi = Roi(Coordinate(raw_roi.begin) + Coordinate(ib), Coordinate(ie) - Coordinate(ib))
            xs.append(torch.from_numpy(np.ascontiguousarray(stage.read_raw(roi))))
        b = 1 if mode == "forward_b1" else batch
        batches = [torch.stack(xs[i : i + b])[:, None] for i in range(0, len(xs), b)]
        with torch.inference_mode():
            stage.model(batches[0])  # warm-up at this batch size
            c0, t0 = time.process_time(), time.perf_counter()
            for x in batches:
                stage.model(x)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"mode": mode, "candidates": len(cands), "wall_s": wall, "cpu_s": cpu, "setup_s": setup_s,
            "threads": threads, "peak_rss_mib": C.status_kib("VmHWM") / 1024, **extra}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="32,256,256")
    ap.add_argument("--block", default="16x128x128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-candidates", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child")
    ap.add_argument("--config")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.config), args.child, args.max_candidates, args.batch)))
        return

    shape = tuple(int(v) for v in args.shape.split(","))
    block = tuple(int(v) for v in args.block.split("x"))
    ckpt, ckpt_kind = tiny_checkpoint(args.checkpoint)
    data = C.oracle_data(shape, seed=args.seed)
    run_dir = C.WORK / "mea" / f"{'x'.join(map(str, shape))}-b{args.block}"
    config = C.segmented_run(data, run_dir, "mea-bench", block=block,
                             stages=["fragments", "fragment_edges", "agglomerate", "relabel", "contacts", "candidates"],
                             extra={"predict.checkpoint": str(ckpt), "mea.device": "cpu"})
    from embedseg_daisy.config import load_config
    from embedseg_daisy.store import open_store

    store = open_store(load_config(config))
    n_all = store.count("candidates", {"segmentation": "segmentation"})
    store.close()
    if n_all == 0:
        raise SystemExit("no self-touch candidates in this volume; try a larger --shape")
    modes = ["stage", "decide", "forward_b1", f"forward_b{args.batch}"]
    res = {m: [] for m in modes}
    for rep in range(args.repeats):
        for m in modes:
            mode = m if not m.startswith("forward_b") or m == "forward_b1" else "forward_bN"
            r = C.child([__file__, "--child", mode, "--config", config, "--max-candidates", args.max_candidates,
                         "--batch", args.batch])
            res[m].append(r)
            print(f"  {m:12s} rep {rep}: {r['wall_s'] / r['candidates']:.3f} s/candidate (cpu {r['cpu_s'] / r['candidates']:.3f})", flush=True)
    n = res["stage"][0]["candidates"]
    summary = {}
    for m, rs in res.items():
        w = C.median([r["wall_s"] for r in rs])
        summary[m] = {"seconds_per_candidate": w / n, "cpu_seconds_per_candidate": C.median([r["cpu_s"] for r in rs]) / n,
                      "wall_s_runs": [r["wall_s"] for r in rs], "peak_rss_mib": C.median([r["peak_rss_mib"] for r in rs]),
                      "setup_s": C.median([r["setup_s"] for r in rs])}
    sb = summary[f"forward_b{args.batch}"]["seconds_per_candidate"]
    s1 = summary["forward_b1"]["seconds_per_candidate"]
    st = summary["stage"]["seconds_per_candidate"]
    report = {"benchmark": "MEA seconds per candidate (CPU)", "command": C.command_line(), "machine": C.machine(),
              "shape": list(shape), "checkpoint": str(ckpt), "checkpoint_kind": ckpt_kind,
              "torch_threads": res["stage"][0]["threads"], "candidates_in_volume": n_all, "candidates_timed": n,
              "decided_merges": res["stage"][0].get("merges"), "repeats": args.repeats, "batch": args.batch,
              "modes": summary,
              "stage_over_bare_forward": st / s1,
              "batched_forward_speedup": s1 / sb,
              "loadavg_end": [round(v, 2) for v in os.getloadavg()]}
    head = (f"tiny net ({ckpt_kind}), {report['torch_threads']} threads: stage {st:.3f} s/candidate, "
            f"decide {summary['decide']['seconds_per_candidate']:.3f}, bare forward b1 {s1:.3f}, "
            f"b{args.batch} {sb:.3f} ({report['batched_forward_speedup']:.2f}x); stage/forward {report['stage_over_bare_forward']:.2f}")
    print(head)
    C.save("mea", report, f"{n} of {n_all} candidates, {head}", out=args.out)


if __name__ == "__main__":
    main()
