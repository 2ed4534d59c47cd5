"""Score a run against ground truth: ``python -m embedseg_daisy.evaluate CONFIG``.

For every segmentation the run produced (Table 1's rows: baseline WS, WS + MAA,
WS + MAA + MEA, proposed MWS, MWS + MEA) computes VI split = H(S|T) and VI merge =
H(T|S) (nats by default, ``--log-base 2`` for bits), adapted Rand error and counts of
split and merge errors by object overlap; ground-truth label 0 is ignored.  The
contingency table is accumulated block by block, so volumes of any size fit; merge
curves (MAA thresholds, MEA θ_d) relabel the table instead of re-reading volumes.
Scores go to the store's ``scores`` collection (method, threshold); a merge–split
plot (Fig. S15 style) is written when ``evaluate.plot`` is set or ``--plot`` given.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .config import RunConfig, load_config
from .errors import EmbedsegError, InputError
from .evaluation.metrics import Contingency, contingency_table, evaluate_table, merge_tables, relabel_table
from .geometry import iter_blocks
from .pipeline.stage import RunContext
from .volumes import open_volume

#: (method name, dataset, MAA/MEA variant) in Table 1 order
METHODS = [
    ("baseline WS", "baseline_fragments"),
    ("baseline WS+MAA", "baseline_segmentation"),
    ("baseline WS+MAA+MEA", "baseline_segmentation_mea"),
    ("MWS", "segmentation"),
    ("MWS+MEA", "segmentation_mea"),
]


def blockwise_table(gt_vol, seg_vol, roi, block_shape) -> Contingency:
    tables = []
    for _, block in iter_blocks(roi, block_shape):
        tables.append(contingency_table(gt_vol.read(block), seg_vol.read(block)))
    return merge_tables(tables)


def _log_base(value: str) -> float:
    return math.e if value == "e" else 2.0


def mea_curve(store, table: Contingency, seg_name: str, thetas, log_base) -> list[tuple[float, dict]]:
    """Scores of the segmentation with MEA merges applied at several θ_d."""
    from .stages.relabel import merge_map

    rows = store.find_columns(
        "candidates", {"segmentation": seg_name, "status": "decided"}, fields=["s1", "s2", "distance"]
    )
    s1 = np.asarray(rows["s1"], np.int64)
    s2 = np.asarray(rows["s2"], np.int64)
    d = np.asarray(rows["distance"], np.float64)
    out = []
    for theta in thetas:
        keep = (d >= 0) & (d < theta)
        keys, values = merge_map(s1[keep], s2[keep])
        out.append((float(theta), evaluate_table(relabel_table(table, keys, values), log_base)))
    return out


def majority_gt(table: Contingency) -> dict[int, int]:
    """Each segment's ground-truth object: the label covering most of its (non-ignored) voxels."""
    order = np.lexsort((-table.counts, table.seg_ids))
    seg = table.seg_ids[order]
    first = np.r_[True, seg[1:] != seg[:-1]]
    return dict(zip(seg[first].tolist(), table.gt_ids[order][first].tolist()))


def mea_decision_quality(store, table: Contingency, seg_name: str) -> dict:
    """Precision and recall of MEA's merge decisions against ground truth.

    A candidate (s1, s2) should merge when both segments' majority ground-truth object is
    the same; segments made only of ignored (label-0) voxels count as distinct objects.
    """
    rows = store.find("candidates", {"segmentation": seg_name, "status": "decided"}, fields=["s1", "s2", "merge"])
    owner = majority_gt(table)
    tp = fp = fn = tn = 0
    for r in rows:
        g1, g2 = owner.get(int(r["s1"])), owner.get(int(r["s2"]))
        truth = g1 is not None and g1 == g2
        merged = bool(r.get("merge"))
        tp += truth and merged
        fp += merged and not truth
        fn += truth and not merged
        tn += not truth and not merged
    return {
        "decided": len(rows), "should_merge": tp + fn, "merged": tp + fp,
        "true_merges": tp, "false_merges": fp, "missed_merges": fn, "true_keeps": tn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
    }


def maa_curve(store, table: Contingency, thresholds, log_base) -> list[tuple[float, dict]]:
    """Scores of the baseline's fragments agglomerated at several MAA thresholds (one
    merge tree over the run's fragment graph)."""
    from .baseline.agglomeration import mean_affinity_merge_tree
    from .fragment_graph import EDGE_FIELDS, EdgeTable

    cols = store.find_columns("fragment_edges", {"graph": "baseline"}, fields=list(EDGE_FIELDS))
    edges = EdgeTable.from_columns(cols).aggregate()
    nodes = np.unique(np.concatenate([edges.u, edges.v, table.seg_ids.astype(np.int64)]))
    nodes = nodes[nodes != 0]
    u = np.searchsorted(nodes, edges.u)
    v = np.searchsorted(nodes, edges.v)
    tree = mean_affinity_merge_tree(len(nodes), u, v, edges.aff_sum, edges.aff_count)
    out = []
    for t in thresholds:
        clusters = tree.cut(float(t))
        reps = nodes[clusters]
        out.append((float(t), evaluate_table(relabel_table(table, nodes, reps), log_base)))
    return out


def evaluate_run(cfg: RunConfig, *, log_base_name: str | None = None, plot: str | None = None) -> dict:
    if not cfg.input.labels:
        raise InputError("evaluation needs ground truth: set input.labels in the config")
    run = RunContext(cfg)
    log_base_name = log_base_name or cfg.evaluate.log_base
    log_base = _log_base(log_base_name)
    gt = open_volume(cfg.input.container, cfg.input.labels)
    block_shape = tuple(cfg.segment.block_shape_vox)
    results: dict[str, dict] = {}
    curves: dict[str, list[tuple[float, float, float]]] = {}
    tables: dict[str, Contingency] = {}
    from .store import open_store

    store = open_store(cfg)
    now = time.time()
    rows = []
    for method, name in METHODS:
        try:
            seg = open_volume(cfg.output.container, name)
        except EmbedsegError:
            continue
        table = blockwise_table(gt, seg, run.volume_roi, block_shape)
        tables[name] = table
        scores = evaluate_table(table, log_base)
        results[method] = scores
        rows.append(_score_row(method, -1.0, scores, log_base_name, now))
    if "segmentation" in tables:
        thetas = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
        curve = mea_curve(store, tables["segmentation"], "segmentation", thetas, log_base)
        curves["MWS+MEA (θ_d)"] = [(t, s["vi_split"], s["vi_merge"]) for t, s in curve]
        rows += [_score_row("MWS+MEA", t, s, log_base_name, now) for t, s in curve]
    mea_quality = {
        name: mea_decision_quality(store, tables[name], name)
        for name in ("segmentation", "baseline_segmentation")
        if name in tables
    }
    if "baseline_fragments" in tables and cfg.baseline.enabled:
        curve = maa_curve(store, tables["baseline_fragments"], cfg.baseline.thresholds, log_base)
        curves["baseline WS+MAA (threshold)"] = [(t, s["vi_split"], s["vi_merge"]) for t, s in curve]
        rows += [_score_row("baseline WS+MAA", t, s, log_base_name, now) for t, s in curve]
    if rows:
        store.put("scores", rows)
    store.close()
    plot = plot or cfg.evaluate.plot
    if plot and (curves or results):
        from .evaluation.plots import merge_split_plot

        points = {m: (r["vi_split"], r["vi_merge"]) for m, r in results.items()}
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        merge_split_plot(
            curves, plot, "nats" if log_base_name == "e" else "bits", operating_points=points, annotate_thresholds=True
        )
    return {"log_base": log_base_name, "methods": results, "curves": curves, "mea_decisions": mea_quality}


def _score_row(method: str, threshold: float, s: dict, log_base: str, now: float) -> dict:
    return {
        "method": method,
        "threshold": float(threshold),
        "vi_split": s["vi_split"],
        "vi_merge": s["vi_merge"],
        "vi_sum": s["vi_sum"],
        "log_base": log_base,
        "adapted_rand": s["adapted_rand_error"],
        "splits": s["splits"],
        "merges": s["merges"],
        "details": s,
        "created": now,
    }


def format_table(result: dict) -> str:
    units = "nats" if result["log_base"] == "e" else "bits"
    lines = [f"{'method':<22} {'VI split':>9} {'VI merge':>9} {'VI sum':>9} {'ARE':>7} {'splits':>7} {'merges':>7}  ({units})"]
    for method, s in result["methods"].items():
        lines.append(
            f"{method:<22} {s['vi_split']:>9.4f} {s['vi_merge']:>9.4f} {s['vi_sum']:>9.4f} "
            f"{s['adapted_rand_error']:>7.4f} {s['splits']:>7} {s['merges']:>7}"
        )
    for seg, q in result.get("mea_decisions", {}).items():
        if q["decided"]:
            lines.append(
                f"MEA on {seg}: {q['decided']} decided, {q['merged']} merged; precision {_fmt(q['precision'])}, "
                f"recall {_fmt(q['recall'])} (of {q['should_merge']} candidates that should merge)"
            )
    return "\n".join(lines)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedseg_daisy.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--log-base", choices=["e", "2"], help="nats (e, default) or bits (2)")
    parser.add_argument("--plot", help="merge-split plot PNG (overrides evaluate.plot)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        result = evaluate_run(cfg, log_base_name=args.log_base, plot=args.plot)
    except EmbedsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result["methods"]:
        print("error: no segmentation found in the output container; run the pipeline first", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
