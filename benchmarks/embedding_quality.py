"""Embedding quality of a checkpoint on a held-out synthetic volume.

    python benchmarks/embedding_quality.py [--checkpoint checkpoints/embedding_tiny.pt] [--seed 3001] [--patches 12]

Embeddings are only comparable inside one network patch (the loss constrains
distances within a patch), so everything is measured per patch: random patches
(input 20×128×128, output crop 16×96×96) of a volume whose seed was never used for
training.  Per ground-truth object (local connected piece in the crop, ≥ 50 voxels):
the mean L1 distance of its voxels' embeddings to the object's mean (goal < δ_d = 1.5);
per pair of *touching* objects (pieces of two different objects closer than 3 voxels
in-plane): the L1 distance between their means (goal > 2δ_d = 3); pairs of pieces of one
object (locally split parts, which the loss leaves alone) are counted apart.  Background mask: F1 of P(background) ≥ 0.6 against
the ground truth background (label 0 after the 3×3×1 kernel of Fig. S4, the training
target) and against raw label 0.  Prints and saves ``benchmarks/results/embedding_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedseg_daisy.nn.checkpoint import load_checkpoint  # noqa: E402
from embedseg_daisy.nn.cpu import fast_inference  # noqa: E402
from embedseg_daisy.nn.rsunet import crop_center  # noqa: E402
from embedseg_daisy.synth import generate_volume  # noqa: E402
from embedseg_daisy.training.loss import augment_background  # noqa: E402


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    fp = float((pred & ~truth).sum())
    fn = float((~pred & truth).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1.0)


def patch_stats(emb: np.ndarray, labels: np.ndarray, min_size: int = 50):
    pieces = np.zeros(labels.shape, np.int64)
    n = 0
    for value in np.unique(labels):
        if value == 0:
            continue
        cc, k = ndimage.label(labels == value)
        pieces[cc > 0] = cc[cc > 0] + n
        n += k
    ids, counts = np.unique(pieces[pieces > 0], return_counts=True)
    ids = ids[counts >= min_size]
    # the ground-truth object of each piece: pieces of one object are not "between objects"
    # (the loss leaves locally split parts alone)
    owner = dict(zip(pieces[pieces > 0].tolist(), labels[pieces > 0].tolist()))
    flat = emb.reshape(emb.shape[0], -1)
    lab = pieces.ravel()
    means, spreads = {}, []
    for i in ids:
        vox = flat[:, lab == i]
        mu = vox.mean(axis=1)
        means[int(i)] = mu
        spreads.append(float(np.abs(vox - mu[:, None]).sum(axis=0).mean()))
    # touching pairs: pieces within 3 voxels in-plane (across a membrane)
    grown = ndimage.grey_dilation(pieces, footprint=np.ones((1, 7, 7), bool))
    pairs = set()
    mask = (pieces > 0) & (grown > 0) & (pieces != grown)
    for a, b in np.unique(np.stack([pieces[mask], grown[mask]], 1), axis=0):
        if int(a) in means and int(b) in means:
            pairs.add((min(int(a), int(b)), max(int(a), int(b))))
    # grey_dilation takes the max neighbour only; also look from the other side
    grown_min = -ndimage.grey_dilation(-np.where(pieces > 0, pieces, np.iinfo(np.int64).max // 2), footprint=np.ones((1, 7, 7), bool))
    mask = (pieces > 0) & (grown_min < np.iinfo(np.int64).max // 4) & (pieces != grown_min)
    for a, b in np.unique(np.stack([pieces[mask], grown_min[mask]], 1), axis=0):
        if int(a) in means and int(b) in means:
            pairs.add((min(int(a), int(b)), max(int(a), int(b))))
    dists = [float(np.abs(means[a] - means[b]).sum()) for a, b in pairs if owner[a] != owner[b]]
    same = [float(np.abs(means[a] - means[b]).sum()) for a, b in pairs if owner[a] == owner[b]]
    return spreads, dists, same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "embedding_tiny.pt"))
    parser.add_argument("--seed", type=int, default=3001)
    parser.add_argument("--patches", type=int, default=12)
    parser.add_argument("--theta-mask", type=float, default=0.6)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embedding_quality.json"))
    args = parser.parse_args(argv)
    t0 = time.time()
    model, spec = load_checkpoint(args.checkpoint, expected_kind="embedding")
    model = fast_inference(model)
    vol = generate_volume((40, 384, 384), args.seed)
    rng = np.random.default_rng(args.seed)
    inp, out = np.asarray(spec.input_shape), np.asarray(spec.output_crop)
    spreads, dists, same, f1_kernel, f1_raw = [], [], [], [], []
    raw = vol.raw.astype(np.float32) / 255.0
    target_bg = augment_background(vol.labels) == 0
    for _ in range(args.patches):
        begin = [int(rng.integers(0, s - i + 1)) for s, i in zip(vol.raw.shape, inp)]
        sl = tuple(slice(b, b + i) for b, i in zip(begin, inp))
        x = torch.from_numpy(np.ascontiguousarray(raw[sl]))[None, None]
        with torch.inference_mode():
            o = model(x)
        emb = crop_center(o.embedding, tuple(out))[0].numpy()
        bg = torch.sigmoid(crop_center(o.mask_logit, tuple(out)))[0, 0].numpy()
        ctx = (inp - out) // 2
        osl = tuple(slice(b + c, b + c + s) for b, c, s in zip(begin, ctx, out))
        labels = vol.labels[osl]
        s, d, p = patch_stats(emb, labels)
        spreads += s
        dists += d
        same += p
        pred = bg >= args.theta_mask
        f1_kernel.append(f1(pred, target_bg[osl]))
        f1_raw.append(f1(pred, labels == 0))
    spreads, dists = np.asarray(spreads), np.asarray(dists)
    result = {
        "command": "python benchmarks/embedding_quality.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "checkpoint": str(Path(args.checkpoint).relative_to(ROOT) if Path(args.checkpoint).is_relative_to(ROOT) else args.checkpoint),
        "seed": args.seed,
        "patches": args.patches,
        "objects": int(spreads.size),
        "touching_pairs": int(dists.size),
        "within_object_mean_l1_median": float(np.median(spreads)),
        "fraction_objects_within_below_delta": float((spreads < 1.5).mean()),
        "between_touching_mean_l1_median": float(np.median(dists)),
        "fraction_pairs_between_above_2delta": float((dists > 3.0).mean()),
        "between_touching_mean_l1_quartiles": [float(q) for q in np.percentile(dists, [25, 50, 75])],
        "fraction_pairs_between_below_delta": float((dists < 1.5).mean()),
        "same_object_piece_pairs": len(same),
        "same_object_piece_mean_l1_median": float(np.median(same)) if same else None,
        "mask_f1_vs_training_target": float(np.mean(f1_kernel)),
        "mask_f1_vs_label0": float(np.mean(f1_raw)),
        "seconds": time.time() - t0,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
