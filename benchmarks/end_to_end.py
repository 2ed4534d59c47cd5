"""The whole pipeline through ``python -m embedseg_daisy.run`` vs the sum of its kernels.

    python benchmarks/end_to_end.py                                  # 32x256x256, tiny net, 2 workers
    python benchmarks/end_to_end.py --predictions oracle --shape 64,512,512
    python benchmarks/end_to_end.py --workers 1 --repeats 1

A synthetic volume (``embedseg_daisy.synth``: raw + ground truth) is run end to end:
predict (the ``tiny`` embedding net on CPU -- the shipped checkpoint when present, else
randomly initialised weights, which time the same) or oracle affinities
(``--predictions oracle``: the segmentation stages start from affinities derived from
the ground truth), fragments, fragment_edges, agglomerate (all levels), relabel,
contacts, candidates, MEA, relabel_mea; SQLite store; the local launcher.

Measured per repeat on a fresh output: the run's wall time, the CPU time of its whole
process tree, per daisy task the peak RSS of its worker processes (sampled from
``/proc``), and from the store's block records the summed block durations per stage.

Kernels, measured afterwards in one fresh process on the same volume and the run's own
outputs (no zarr, no store, no scheduler): the bare network forward over every patch of
the lattice (the batches predict runs; MEA: one forward per candidate), our MWS kernel in
region mode per block, ``block_edge_table`` per block, one graph MWS over the whole
fragment graph, the relabel gather, ``block_contacts_with_gaps`` per block, contact
stitching + candidate selection, the MEA relabel gather.

MEA and relabel_mea are left out by default (``--skip``): the shipped tiny net's
segmentations give ~140 self-touch candidates per Mvox (demo volume, after the minimum
segment size), each a ~2 s network forward on this CPU, which would dominate any CPU run;
``benchmarks/mea.py`` measures MEA per candidate and the report gives the candidate rate.

Goal: run wall time <= 1.2x the kernels' summed time (with ``--workers 1`` the stages of
a phase still overlap through daisy's block-wise chaining, so ``cpu_ratio`` -- the run's
CPU over the kernels' CPU -- is reported too).  Results:
``benchmarks/results/end_to_end.json`` and a line in BENCHMARKS.md.
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

ALL_STAGES = ["predict", "fragments", "fragment_edges", "agglomerate", "relabel", "contacts", "candidates", "mea", "relabel_mea"]


# ---------------------------------------------------------------------- kernels
class _Clock:
    def __init__(self):
        self.rows: dict[str, dict] = {}

    def __call__(self, name):
        clock = self

        class _T:
            def __enter__(self):
                self.c, self.w = time.process_time(), time.perf_counter()

            def __exit__(self, *exc):
                r = clock.rows.setdefault(name, {"cpu_s": 0.0, "wall_s": 0.0})
                r["cpu_s"] += time.process_time() - self.c
                r["wall_s"] += time.perf_counter() - self.w

        return _T()


def kernels_child(config: Path, with_net: bool, with_mea: bool = True) -> dict:
    import torch
    from funlib.geometry import Coordinate

    from embedseg_daisy.blending import get_lattice
    from embedseg_daisy.config import load_config
    from embedseg_daisy.contacts import EDGE_PIECE_DTYPE, LINK_DTYPE, PIECE_DTYPE, block_contacts_with_gaps, stitch_contacts
    from embedseg_daisy.candidates import self_touch_candidates
    from embedseg_daisy.fragment_graph import EDGE_FIELDS, EdgeTable, map_ids, typed_edges
    from embedseg_daisy.geometry import iter_blocks
    from embedseg_daisy.mea import patch_box_around
    from embedseg_daisy.mws import graph_mutex_watershed, mutex_watershed_region
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.stages.candidates import _records
    from embedseg_daisy.stages.fragment_edges import block_edge_table
    from embedseg_daisy.stages.fragments import foreground_from_mask
    from embedseg_daisy.store import open_store

    cfg = load_config(config)
    run = RunContext(cfg, str(config))
    store = open_store(cfg)
    vol = run.volume_roi
    shape = tuple(vol.shape)
    offsets = cfg.offsets.all
    attractive = cfg.offsets.attractive_mask
    affs = run.open_output("affinities").read(vol)
    fg = foreground_from_mask(run.open_output("mask").read(vol), cfg.segment.theta_mask)
    frags = run.open_output("fragments").read(vol)
    seg = run.open_output("segmentation").read(vol)
    clock = _Clock()

    def local(roi):
        return tuple(slice(int(b - o), int(e - o)) for b, e, o in zip(roi.begin, roi.end, vol.begin))

    def grown(roi, m):
        m = Coordinate(m)
        return roi.grow(m, m).intersect(vol)

    # -- predict: bare forward over the lattice, in the configured batches
    if with_net:
        from embedseg_daisy.inference import array_reader
        from embedseg_daisy.nn.checkpoint import load_checkpoint
        from embedseg_daisy.nn.cpu import fast_inference

        model, spec = load_checkpoint(cfg.predict.checkpoint, device="cpu", expected_kind="embedding")
        model = fast_inference(model).eval()
        rawv = run.raw.read(vol)
        read = array_reader(rawv)
        lat = get_lattice(shape, tuple(spec.output_crop))
        patches = lat.patches_touching(((0, 0, 0), shape))
        bs = cfg.predict.batch_size
        batches = []
        for i in range(0, len(patches), bs):
            x = np.stack([read(p.input_box(tuple(spec.output_crop), tuple(spec.input_shape))) for p in patches[i : i + bs]])
            batches.append(torch.from_numpy(np.ascontiguousarray(x[:, None])))
        with torch.inference_mode():
            model(batches[0])  # warm-up
            with clock("predict"):
                for x in batches:
                    model(x)
        n_patches = len(patches)
    else:
        n_patches = 0

    # -- fragments: region-mode MWS per block
    from embedseg_daisy.offsets import max_reach

    reach = max_reach(offsets)
    ctx = tuple(c + r for c, r in zip(cfg.segment.context_vox, reach))
    blocks = [roi for _, roi in iter_blocks(vol, cfg.segment.block_shape_vox)]
    r0 = blocks[0]
    rd = grown(r0, ctx)
    mutex_watershed_region(affs[(slice(None),) + local(rd)], offsets, attractive, fg[local(rd)],
                           tuple(slice(int(b - o), int(e - o)) for b, e, o in zip(grown(r0, cfg.segment.context_vox).begin, grown(r0, cfg.segment.context_vox).end, rd.begin)),
                           tuple(Coordinate(rd.begin) - Coordinate(vol.begin)), shape)  # warm-up
    with clock("fragments"):
        for roi in blocks:
            rd = grown(roi, ctx)
            region = grown(roi, cfg.segment.context_vox)
            inside = tuple(slice(int(b - o), int(e - o)) for b, e, o in zip(region.begin, region.end, rd.begin))
            output = tuple(slice(int(b - o), int(e - o)) for b, e, o in zip(roi.begin, roi.end, rd.begin))
            mutex_watershed_region(affs[(slice(None),) + local(rd)], offsets, attractive, fg[local(rd)], inside,
                                   tuple(Coordinate(rd.begin) - Coordinate(vol.begin)), shape, output=output)

    # -- fragment_edges
    nearest = set(cfg.offsets.nearest_channels())
    with clock("fragment_edges"):
        for roi in blocks:
            rd = grown(roi, reach)
            block_edge_table(frags[local(rd)], tuple(Coordinate(rd.begin) - Coordinate(vol.begin)),
                             affs[(slice(None),) + local(roi)], tuple(Coordinate(roi.begin) - Coordinate(vol.begin)),
                             offsets, attractive, nearest, shape)

    # -- agglomerate: one graph MWS over the whole fragment graph
    cols = store.find_columns("fragment_edges", {"graph": "mws"}, fields=list(EDGE_FIELDS))
    edges = EdgeTable.from_columns(cols).aggregate()
    with clock("agglomerate"):
        nodes = np.unique(np.concatenate([edges.u, edges.v]))
        u = np.searchsorted(nodes, edges.u)
        v = np.searchsorted(nodes, edges.v)
        eu, ev, keys, att = typed_edges(EdgeTable(u, v, edges.attr_key, edges.rep_key, edges.aff_sum, edges.aff_count))
        graph_mutex_watershed(len(nodes), eu, ev, keys, att)

    # -- relabel (and relabel_mea: the same gather through the merge table)
    table = store.find_columns("fragment_segments", {"graph": "mws"}, fields=["fragment", "segment"])
    fk, fv = np.asarray(table["fragment"], np.int64), np.asarray(table["segment"], np.int64)
    for name, arr in (("relabel", frags), ("relabel_mea", seg))[: 2 if with_mea and with_net else 1]:
        with clock(name):
            for roi in blocks:
                f = arr[local(roi)]
                ids, inverse = np.unique(f, return_inverse=True)
                map_ids(ids.astype(np.int64), fk, fv).astype(np.uint64)[inverse].reshape(f.shape)

    # -- contacts
    gap = cfg.contacts.gap_vox
    nn = cfg.offsets.nearest_channels()
    affs_nn = affs[nn]
    cblocks = [roi for _, roi in iter_blocks(vol, cfg.contacts.block_shape_vox)]
    jobs = []
    for roi in cblocks:
        rd = grown(roi, (1, gap + 1, gap + 1))
        jobs.append((np.ascontiguousarray(seg[local(rd)]), np.ascontiguousarray(affs_nn[(slice(None),) + local(rd)]),
                     (tuple(Coordinate(roi.begin) - Coordinate(vol.begin)), tuple(Coordinate(roi.end) - Coordinate(vol.begin))),
                     tuple(Coordinate(rd.begin) - Coordinate(vol.begin))))
    block_contacts_with_gaps(*jobs[0][:4], shape, gap)  # warm-up
    with clock("contacts"):
        for s, a, box, origin in jobs:
            block_contacts_with_gaps(s, a, box, origin, shape, gap)

    # -- candidates: stitch every shard's rows, select
    where = {"segmentation": "segmentation"}
    pieces = _records(store.find_columns("contact_pieces", where, fields=["piece", "s1", "s2", "size", "sum_z2", "sum_y2", "sum_x2", "aff_sum"]),
                      PIECE_DTYPE, {"piece_id": "piece", "seg_a": "s1", "seg_b": "s2", "size": "size", "sum_z2": "sum_z2",
                                    "sum_y2": "sum_y2", "sum_x2": "sum_x2", "aff_sum": "aff_sum"})
    links = _records(store.find_columns("contact_links", where, fields=["piece", "edge", "s1", "s2"]), LINK_DTYPE,
                     {"piece_id": "piece", "edge_id": "edge", "seg_a": "s1", "seg_b": "s2"})
    fedges = _records(store.find_columns("contact_edges", where, fields=["edge", "piece", "s1", "s2"]), EDGE_PIECE_DTYPE,
                      {"edge_id": "edge", "piece_id": "piece", "seg_a": "s1", "seg_b": "s2"})
    with clock("candidates"):
        contacts = stitch_contacts(pieces, links, fedges)
        self_touch_candidates(contacts, theta=cfg.contacts.theta_self_touch)

    # -- mea: one forward per candidate
    cands = store.find("candidates", where)
    if with_net and with_mea and cands:
        xs = []
        for c in cands:
            centroid = np.asarray(c["centroid"], np.float64) - np.asarray(vol.begin, np.float64)
            boxes = patch_box_around(centroid, tuple(spec.input_shape), shape, output_shape=tuple(spec.output_crop),
                                     focal_shape=tuple(cfg.mea.focal_window_vox))
            (ib, ie) = boxes.input_box
            xs.append(torch.from_numpy(np.ascontiguousarray(read((tuple(ib), tuple(ie)))))[None, None])
        with torch.inference_mode():
            with clock("mea"):
                for x in xs:
                    model(x)
    store.close()
    return {"kernels": clock.rows, "patches": n_patches, "candidates": len(cands), "blocks": len(blocks),
            "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------- driver
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="32,256,256")
    ap.add_argument("--predictions", choices=["net", "oracle"], default="net")
    ap.add_argument("--block", default="16x128x128", help="segment and contacts block")
    ap.add_argument("--predict-block", default="32x256x256")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--skip", default="mea,relabel_mea",
                    help="comma list of stages to leave out (default mea,relabel_mea: with the shipped tiny net "
                         "MEA's one CPU forward per candidate would dominate; benchmarks/mea.py times it "
                         "per candidate; --skip '' runs every stage)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child-kernels")
    ap.add_argument("--with-net", action="store_true")
    ap.add_argument("--no-mea", action="store_true")
    args = ap.parse_args(argv)
    if args.child_kernels:
        print(json.dumps(kernels_child(Path(args.child_kernels), args.with_net, not args.no_mea)))
        return

    import mea as mea_bench

    shape = tuple(int(v) for v in args.shape.split(","))
    nvox = int(np.prod(shape))
    block = tuple(int(v) for v in args.block.split("x"))
    pblock = tuple(int(v) for v in args.predict_block.split("x"))
    data = C.oracle_data(shape, seed=args.seed)
    with_net = args.predictions == "net"
    ckpt, ckpt_kind = mea_bench.tiny_checkpoint(args.checkpoint)
    stages = ALL_STAGES if with_net else [s for s in ALL_STAGES if s not in ("predict", "mea", "relabel_mea")]
    stages = [s for s in stages if s not in args.skip.split(",")]
    tag = f"{'x'.join(map(str, shape))}-{args.predictions}-w{args.workers}"
    runs = []
    config = None
    for rep in range(args.repeats):
        config = C.run_config(data, C.WORK / "end_to_end" / tag, f"e2e-{rep}", block=block, stages=stages,
                              workers=args.workers,
                              extra={"predict.checkpoint": str(ckpt), "predict.block_shape_vox": list(pblock),
                                     "predict.workers": 1, "predict.device": "cpu", "mea.device": "cpu",
                                     "mea.workers": 1})
        r = C.run_pipeline(config)
        r["blocks"] = C.block_records(config, r["started_epoch"])
        r["store"] = C.store_report(config)
        runs.append(r)
        print(f"  rep {rep}: wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, " + ", ".join(
            f"{k} {v['peak_worker_rss_mib']:.0f}MiB" for k, v in r["tasks"].items()), flush=True)
    k = C.child([__file__, "--child-kernels", config, *(["--with-net"] if with_net else []),
                 *(["--no-mea"] if "mea" not in stages else [])])
    kern = k["kernels"]
    ksum_wall = sum(v["wall_s"] for v in kern.values())
    ksum_cpu = sum(v["cpu_s"] for v in kern.values())
    wall = C.median([r["wall_s"] for r in runs])
    cpu = C.median([r["cpu_s"] for r in runs])
    # per stage: summed block durations in the run vs the kernel
    stages_tbl = {}
    last = runs[len(runs) // 2]
    for sid, rec in last["blocks"].items():
        base = "agglomerate" if sid.startswith("agglomerate") else sid
        row = stages_tbl.setdefault(base, {"blocks": 0, "block_seconds_sum": 0.0, "span_s": 0.0, "peak_worker_rss_mib": 0.0,
                                           "first_block_start_s": rec["first_block_start_s"], "last_block_end_s": 0.0})
        row["first_block_start_s"] = min(row["first_block_start_s"], rec["first_block_start_s"])
        row["last_block_end_s"] = max(row["last_block_end_s"], rec["last_block_end_s"])
        row["blocks"] += rec["blocks"]
        row["block_seconds_sum"] += rec["block_seconds_sum"]
        row["span_s"] += rec["span_s"]
        row["peak_worker_rss_mib"] = max(row["peak_worker_rss_mib"], last["tasks"].get(sid, {}).get("peak_worker_rss_mib", 0.0))
    for base, row in stages_tbl.items():
        kv = kern.get(base)
        row["kernel_wall_s"] = kv["wall_s"] if kv else None
        row["block_seconds_over_kernel"] = row["block_seconds_sum"] / kv["wall_s"] if kv and kv["wall_s"] > 0 else None
        row["excess_s"] = row["block_seconds_sum"] - (kv["wall_s"] if kv else 0.0)
    ratio = wall / ksum_wall
    worst = max(stages_tbl.items(), key=lambda kv: kv[1]["excess_s"])[0] if stages_tbl else None
    busy = sum(r["block_seconds_sum"] for r in stages_tbl.values())
    report = {
        "benchmark": "end to end vs kernels", "command": C.command_line(), "machine": C.machine(),
        "shape": list(shape), "voxels": nvox, "predictions": args.predictions, "checkpoint": str(ckpt),
        "checkpoint_kind": ckpt_kind, "block": list(block), "predict_block": list(pblock), "workers": args.workers,
        "repeats": args.repeats, "stages": stages,
        "run_wall_s": wall, "run_wall_s_runs": [r["wall_s"] for r in runs],
        "run_cpu_s": cpu, "run_cpu_s_runs": [r["cpu_s"] for r in runs],
        "kernels": kern, "kernel_sum_wall_s": ksum_wall, "kernel_sum_cpu_s": ksum_cpu,
        "kernel_info": {k2: v for k2, v in k.items() if k2 != "kernels"},
        "ratio_wall_over_kernels": ratio, "ratio_cpu_over_kernel_cpu": cpu / ksum_cpu,
        "goal_ratio": 1.2, "goal_met": ratio <= 1.2,
        "per_stage": stages_tbl,
        "block_seconds_sum_all_stages": busy,
        "outside_blocks_s": wall * args.workers - busy,
        "largest_excess_stage": worst,
        "per_task_worker_peaks": last["tasks"], "driver_peak_rss_mib": last["driver_peak_rss_mib"],
        "voxels_per_s": nvox / wall,
        "store_rows": {k: v["rows"] for k, v in last["store"].items()},
        "candidates_per_mvox": last["store"].get("candidates", {}).get("rows", 0) / (nvox / 1e6),
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }
    lines = [f"{'stage':16s} {'blocks':>6s} {'block-s':>8s} {'kernel-s':>8s} {'ratio':>6s} {'peak MiB':>8s} {'from s':>7s} {'to s':>7s}"]
    for base, row in stages_tbl.items():
        kr = row["block_seconds_over_kernel"]
        kw = row["kernel_wall_s"]
        lines.append(f"{base:16s} {row['blocks']:6d} {row['block_seconds_sum']:8.2f} "
                     f"{(f'{kw:8.2f}' if kw is not None else '       -')} {(f'{kr:6.2f}' if kr else '     -')} {row['peak_worker_rss_mib']:8.0f} "
                     f"{row['first_block_start_s']:7.1f} {row['last_block_end_s']:7.1f}")
    print("\n".join(lines))
    head = (f"{args.predictions} predictions, {nvox / 1e6:.1f} Mvox, {args.workers} workers: run {wall:.1f} s wall / "
            f"{cpu:.1f} core-s vs kernels {ksum_wall:.1f} s ({ksum_cpu:.1f} core-s): ratio {ratio:.2f} wall "
            f"(goal 1.2, {'met' if ratio <= 1.2 else 'missed'}), {cpu / ksum_cpu:.2f} CPU; largest excess: {worst}")
    print(head)
    C.save("end_to_end" if args.out is None else Path(args.out).stem, report, head, out=args.out)


if __name__ == "__main__":
    main()
