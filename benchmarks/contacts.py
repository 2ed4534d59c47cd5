"""Contacts stage (and the candidates stage that stitches its output) per block.

    python benchmarks/contacts.py                         # 32x256x256, blocks 16x128x128 and 32x256x256
    python benchmarks/contacts.py --shape 64,512,512 --blocks 32x256x256

A segmentation is made once (untimed) by the real pipeline on oracle affinities (see
``benchmarks/segment.py`` for the data).  Then, each in a fresh process, repeated:

* ``contacts`` stage: every block serially as one daisy worker runs it (read segmentation
  + nearest-neighbour affinities with margin, ``block_contacts_with_gaps``, three store
  batches per block); voxels per CPU second, peak worker RSS;
* ``candidates`` stage: every shard (stitching of pieces, links, face edges; self-touch
  candidates) -- its memory grows with the shard's share of all contacts, not with a block;
* ``kernel``: ``block_contacts_with_gaps`` alone per block on in-memory arrays (no I/O,
  no store) -- the stage's overhead is the ratio.

Results: ``benchmarks/results/contacts.json`` and a line in BENCHMARKS.md.
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
    from funlib.geometry import Coordinate

    from embedseg_daisy.config import load_config
    from embedseg_daisy.contacts import block_contacts_with_gaps
    from embedseg_daisy.geometry import iter_blocks
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.stages.common import grown

    cfg = load_config(config)
    run = RunContext(cfg, str(config))
    vol = run.volume_roi
    seg_v = run.open_output("segmentation")
    aff_v = run.open_output("affinities")
    seg_all = seg_v.read(vol)
    nn = cfg.offsets.nearest_channels()
    affs_all = aff_v.read(vol)[nn]
    gap = cfg.contacts.gap_vox
    jobs = []
    for _, roi in iter_blocks(vol, cfg.contacts.block_shape_vox):
        read = grown(roi, (1, gap + 1, gap + 1), vol)
        sl = tuple(slice(int(b - o), int(e - o)) for b, e, o in zip(read.begin, read.end, vol.begin))
        box = (tuple(Coordinate(roi.begin) - Coordinate(vol.begin)), tuple(Coordinate(roi.end) - Coordinate(vol.begin)))
        origin = tuple(Coordinate(read.begin) - Coordinate(vol.begin))
        jobs.append((np.ascontiguousarray(seg_all[sl]), np.ascontiguousarray(affs_all[(slice(None),) + sl]), box, origin))
    del seg_all, affs_all
    s, a, box, origin = jobs[0]
    block_contacts_with_gaps(s, a, box, origin, tuple(vol.shape), gap)  # warm-up (numba cache)
    C.reset_peak()
    rss0 = C.status_kib("VmRSS")
    c0, t0 = time.process_time(), time.perf_counter()
    pieces = 0
    for s, a, box, origin in jobs:
        pieces += len(block_contacts_with_gaps(s, a, box, origin, tuple(vol.shape), gap).pieces)
    return {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0, "blocks": len(jobs),
            "pieces": pieces, "working_mib": (C.status_kib("VmHWM") - rss0) / 1024}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="32,256,256")
    ap.add_argument("--blocks", default="16x128x128,32x256x256", help="contacts block shapes (segmentation uses the same)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--affinities", choices=["embedding", "label"], default="embedding")
    ap.add_argument("--shards", type=int, default=2)
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
    report = {"benchmark": "contacts and candidates stages", "command": C.command_line(), "machine": C.machine(),
              "shape": list(shape), "voxels": nvox, "affinities": args.affinities, "repeats": args.repeats,
              "shards": args.shards, "blocks": {}}
    head = []
    for btxt in args.blocks.split(","):
        block = tuple(int(v) for v in btxt.split("x"))
        run_dir = C.WORK / "contacts" / f"{'x'.join(map(str, shape))}-b{btxt}-{args.affinities}"
        config = C.segmented_run(data, run_dir, f"contacts-{btxt}", block=block, extra={"contacts.shards": args.shards})
        res = {}
        for sid in ("contacts", "candidates"):
            runs = []
            for rep in range(args.repeats):
                runs.append(C.child([__file__, "--child-stage", sid, "--config", config]))
                print(f"  {btxt} {sid} rep {rep}: cpu {runs[-1]['cpu_s']:.2f} s, peak {runs[-1]['peak_rss_mib']:.0f} MiB", flush=True)
            res[sid] = C.stage_summary(runs, nvox)
        ks = []
        for rep in range(args.repeats):
            ks.append(C.child([__file__, "--child-kernel", "--config", config]))
            print(f"  {btxt} kernel rep {rep}: cpu {ks[-1]['cpu_s']:.2f} s", flush=True)
        kc = C.median([k["cpu_s"] for k in ks])
        res["kernel"] = {"cpu_s": kc, "cpu_s_runs": [k["cpu_s"] for k in ks], "voxels_per_cpu_s": nvox / kc,
                         "working_mib": C.median([k["working_mib"] for k in ks]), "pieces": ks[0]["pieces"]}
        from embedseg_daisy.config import load_config
        from embedseg_daisy.store import open_store

        store = open_store(load_config(config))
        res["rows"] = {c: store.count(c) for c in ("contact_pieces", "contact_links", "contact_edges", "contacts", "candidates")}
        store.close()
        res["stage_over_kernel_cpu"] = res["contacts"]["cpu_s"] / kc
        report["blocks"][btxt] = res
        head.append(f"block {btxt}: contacts {res['contacts']['voxels_per_cpu_s'] / 1e6:.2f} Mvox/core-s "
                    f"({res['stage_over_kernel_cpu']:.2f}x its kernel), peak worker {res['contacts']['peak_rss_mib']:.0f} MiB "
                    f"(+{res['contacts']['peak_over_setup_mib']:.0f}); candidates {res['candidates']['cpu_s']:.2f} core-s "
                    f"for {res['rows']['contact_pieces']} pieces")
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print("\n".join(head))
    C.save("contacts", report, f"{nvox / 1e6:.1f} Mvox: " + "; ".join(head), out=args.out)


if __name__ == "__main__":
    main()
