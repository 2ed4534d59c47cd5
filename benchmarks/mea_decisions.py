"""Why MEA decides as it does: focal-window embedding distances of candidates vs. of
random boundaries between distinct ground-truth objects.

    python benchmarks/mea_decisions.py configs/demo.json [--boundaries 60] [--seed 0]

Needs a finished run with ground truth (e.g. ``make demo``).  For every decided MWS
candidate it re-runs the MEA decision's net forward and reports the L1 distance of the
two segments' focal-window means, split by whether the pair is truly one object
(both segments' majority ground-truth label agree); for ``--boundaries`` random places
where two distinct ground-truth objects face each other across a membrane it computes
the same distance with the ground-truth objects as the "segments".  The fraction below
θ_d of each group says whether false merges come from where candidates are (contacts
where the net's embeddings already agree) or from the embeddings in general.  Results:
``benchmarks/results/mea_decisions.json`` and a line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def focal_distance(stage, centroid, s1, s2, seg_volume: np.ndarray) -> float:
    import torch
    from funlib.geometry import Coordinate, Roi

    from embedseg_daisy.mea import mea_decision, patch_box_around
    from embedseg_daisy.nn.rsunet import crop_center

    spec, cfg = stage.spec, stage.cfg
    boxes = patch_box_around(np.asarray(centroid, float), tuple(spec.input_shape), seg_volume.shape,
                             output_shape=tuple(spec.output_crop), focal_shape=tuple(cfg.mea.focal_window_vox))
    (ib, ie), (ob, oe) = boxes.input_box, boxes.output_box
    x = torch.from_numpy(np.ascontiguousarray(stage.read_raw(Roi(Coordinate(ib), Coordinate(ie) - Coordinate(ib)))))
    with torch.inference_mode():
        emb = crop_center(stage.model(x[None, None]).embedding, tuple(spec.output_crop))[0].float()
    seg = seg_volume[tuple(slice(b, e) for b, e in zip(ob, oe))]
    r = mea_decision(emb, seg, int(s1), int(s2), focal_box=boxes.focal_in_output, theta_d=cfg.mea.theta_d)
    return float(r.distance)


def summary(d: np.ndarray, theta: float) -> dict:
    d = d[np.isfinite(d)]
    return {"n": int(len(d)), "median": float(np.median(d)) if len(d) else None,
            "fraction_below_theta_d": float((d < theta).mean()) if len(d) else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--boundaries", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from embedseg_daisy.config import load_config
    from embedseg_daisy.evaluate import majority_gt
    from embedseg_daisy.evaluation.metrics import contingency_table
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.stages.mea import MEA
    from embedseg_daisy.store import open_store
    from embedseg_daisy.volumes import open_volume

    cfg = load_config(args.config)
    stage = MEA(RunContext(cfg), "mws")
    stage.setup()
    gt_vol = open_volume(cfg.input.container, cfg.input.labels)
    seg_vol = open_volume(cfg.output.container, "segmentation")
    gt, seg = gt_vol.read(gt_vol.roi), seg_vol.read(seg_vol.roi)
    theta = cfg.mea.theta_d
    owner = majority_gt(contingency_table(gt, seg))

    store = open_store(cfg)
    cands = store.find("candidates", {"segmentation": "segmentation", "status": "decided"})
    store.close()
    origin = np.asarray(stage.raw.roi.begin, float)
    true_d, false_d = [], []
    for c in cands:
        d = focal_distance(stage, np.asarray(c["centroid"], float) - origin, c["s1"], c["s2"], seg)
        same = owner.get(int(c["s1"])) is not None and owner.get(int(c["s1"])) == owner.get(int(c["s2"]))
        (true_d if same else false_d).append(d)

    # random places where two distinct objects face each other across a thin membrane (x)
    rng = np.random.default_rng(args.seed)
    a, b = gt[:, :, :-3], gt[:, :, 3:]
    zz, yy, xx = np.nonzero((a != b) & (a > 0) & (b > 0))
    boundary_d = []
    for i in rng.choice(len(zz), min(args.boundaries, len(zz)), replace=False):
        z, y, x = int(zz[i]), int(yy[i]), int(xx[i])
        boundary_d.append(focal_distance(stage, (z, y, x + 1), gt[z, y, x], gt[z, y, x + 3], gt))

    report = {
        "benchmark": "MEA focal-window distances: candidates vs random distinct-object boundaries",
        "command": C.command_line(), "machine": C.machine(), "theta_d": theta,
        "candidates_truly_one_object": summary(np.asarray(true_d), theta),
        "candidates_distinct_objects": summary(np.asarray(false_d), theta),
        "random_distinct_boundaries": summary(np.asarray(boundary_d), theta),
    }
    for k in ("candidates_truly_one_object", "candidates_distinct_objects", "random_distinct_boundaries"):
        s = report[k]
        print(f"{k:30s} n={s['n']:4d}  median d={s['median']:.2f}  below θ_d={s['fraction_below_theta_d']:.2f}")
    t, f, r = (report[k] for k in ("candidates_truly_one_object", "candidates_distinct_objects",
                                    "random_distinct_boundaries"))
    headline = (f"{cfg.name}: below θ_d={theta}: true candidates {t['fraction_below_theta_d']:.2f} (n={t['n']}), "
                f"distinct-object candidates {f['fraction_below_theta_d']:.2f} (n={f['n']}), random distinct "
                f"boundaries {r['fraction_below_theta_d']:.2f} (n={r['n']})")
    C.save("mea_decisions", report, headline, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
