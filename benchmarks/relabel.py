"""Relabel stages: fragments -> segments (``relabel``) and segments -> merged segments
after MEA (``relabel_mea``), per block.

    python benchmarks/relabel.py                          # 32x256x256, blocks 16x128x128 and 32x256x256
    python benchmarks/relabel.py --shape 64,512,512 --blocks 32x256x256

Fragments, fragment edges and the agglomeration hierarchy are made once (untimed) by the
real pipeline on oracle affinities.  Then, each in a fresh process, repeated:

* ``relabel`` stage: every block serially as one daisy worker runs it: read fragments,
  chase each distinct fragment id through the store's lookups of every level (one
  ``IN`` query per level and 5,000 ids), write ``segmentation`` and the block's
  fragment -> segment rows;
* ``relabel_mea`` stage: read segmentation, map through the MEA merge table (empty here:
  no candidates were decided), write ``segmentation_mea``;
* ``kernel``: the in-memory part of ``relabel`` per block (``np.unique`` with inverse,
  ``map_ids`` through a complete fragment -> segment table, the gather) without zarr or
  the store.

Results: ``benchmarks/results/relabel.json`` and a line in BENCHMARKS.md.
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


def kernel_child(config: Path) -> dict:
    from embedseg_daisy.config import load_config
    from embedseg_daisy.fragment_graph import map_ids
    from embedseg_daisy.geometry import iter_blocks
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.store import open_store

    cfg = load_config(config)
    run = RunContext(cfg, str(config))
    vol = run.volume_roi
    frags = run.open_output("fragments").read(vol)
    store = open_store(cfg)
    table = store.find_columns("fragment_segments", {"graph": "mws"}, fields=["fragment", "segment"])
    keys = np.asarray(table["fragment"], np.int64)
    values = np.asarray(table["segment"], np.int64)
    blocks = []
    for _, roi in iter_blocks(vol, cfg.segment.block_shape_vox):
        sl = tuple(slice(int(b - o), int(e - o)) for b, e, o in zip(roi.begin, roi.end, vol.begin))
        blocks.append(np.ascontiguousarray(frags[sl]))
    del frags
    C.reset_peak()
    rss0 = C.status_kib("VmRSS")
    c0, t0 = time.process_time(), time.perf_counter()
    for f in blocks:
        ids, inverse = np.unique(f, return_inverse=True)
        segs = map_ids(ids.astype(np.int64), keys, values)
        segs.astype(np.uint64)[inverse].reshape(f.shape)
    return {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0,
            "working_mib": (C.status_kib("VmHWM") - rss0) / 1024, "fragments": int(len(keys))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="32,256,256")
    ap.add_argument("--blocks", default="16x128x128,32x256x256")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--affinities", choices=["embedding", "label"], default="embedding")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child-stage")
    ap.add_argument("--child-kernel", action="store_true")
    ap.add_argument("--config")
    args = ap.parse_args(argv)
    if args.child_stage:
        print(json.dumps(C.run_stage_serial(Path(args.config), args.child_stage)))
        return
    if args.child_kernel:
        print(json.dumps(kernel_child(Path(args.config))))
        return

    shape = tuple(int(v) for v in args.shape.split(","))
    nvox = int(np.prod(shape))
    data = C.oracle_data(shape, seed=args.seed, noise=args.noise, affinities=args.affinities)
    report = {"benchmark": "relabel stages", "command": C.command_line(), "machine": C.machine(),
              "shape": list(shape), "voxels": nvox, "affinities": args.affinities, "repeats": args.repeats, "blocks": {}}
    head = []
    for btxt in args.blocks.split(","):
        block = tuple(int(v) for v in btxt.split("x"))
        run_dir = C.WORK / "relabel" / f"{'x'.join(map(str, shape))}-b{btxt}-{args.affinities}"
        config = C.segmented_run(data, run_dir, f"relabel-{btxt}", block=block)
        res = {}
        for sid in ("relabel", "relabel_mea"):
            runs = []
            for rep in range(args.repeats):
                runs.append(C.child([__file__, "--child-stage", sid, "--config", config]))
                print(f"  {btxt} {sid} rep {rep}: cpu {runs[-1]['cpu_s']:.2f} s, peak {runs[-1]['peak_rss_mib']:.0f} MiB", flush=True)
            res[sid] = C.stage_summary(runs, nvox)
        ks = [C.child([__file__, "--child-kernel", "--config", config]) for _ in range(args.repeats)]
        kc = C.median([k["cpu_s"] for k in ks])
        res["kernel"] = {"cpu_s": kc, "cpu_s_runs": [k["cpu_s"] for k in ks], "voxels_per_cpu_s": nvox / kc,
                         "working_mib": C.median([k["working_mib"] for k in ks]), "fragments": ks[0]["fragments"]}
        res["relabel_over_kernel_cpu"] = res["relabel"]["cpu_s"] / kc
        report["blocks"][btxt] = res
        head.append(f"block {btxt}: relabel {res['relabel']['voxels_per_cpu_s'] / 1e6:.2f} Mvox/core-s "
                    f"({res['relabel_over_kernel_cpu']:.1f}x its in-memory kernel, {ks[0]['fragments']} fragments), "
                    f"peak worker {res['relabel']['peak_rss_mib']:.0f} MiB (+{res['relabel']['peak_over_setup_mib']:.0f}); "
                    f"relabel_mea {res['relabel_mea']['voxels_per_cpu_s'] / 1e6:.2f} Mvox/core-s")
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print("\n".join(head))
    C.save("relabel", report, f"{nvox / 1e6:.1f} Mvox: " + "; ".join(head), out=args.out)


if __name__ == "__main__":
    main()
