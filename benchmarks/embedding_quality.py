"""Embedding quality of checkpoints on held-out synthetic volumes.

    python benchmarks/embedding_quality.py [--checkpoint A.pt [B.pt ...]]
        [--seeds 3001 ... 3016] [--patches 12] [--shape 40 384 384]

Embeddings are only comparable inside one network patch (the loss constrains
distances within a patch), so everything is measured per patch: random patches
(input 20×128×128, output crop 16×96×96) of volumes whose seeds were never used for
training (training: 1–4, 6–9; validation: 5).

* Per ground-truth object (local connected piece in the crop, ≥ 50 voxels): the mean
  L1 distance of its voxels' embeddings to the object's mean (goal < δ_d = 1.5).
* Per pair of *touching* objects (pieces of two different objects closer than 3 voxels
  in-plane): the L1 distance between their means (goal > 2δ_d = 3).  Pairs of pieces of
  one object (locally split parts, which the loss leaves alone) are counted apart.
* Background mask: F1 of P(background) ≥ 0.6 against the ground truth background
  (label 0 after the 3×3×1 kernel of Fig. S4, the training target) and against raw
  label 0.

The headline figures pool the patches of several held-out volumes (``--seeds``,
``--patches`` each).  One volume is a poor sample -- with the shipped net the touching
fraction ranges from 0.447 (seed 3001) to 0.630 (seed 3013) on 48 patches each -- so
each volume's own figures are reported too (``per_volume``).  ``--seeds 3001 --patches
48`` is the single-volume measurement of the reports before stop 18.

Two diagnostics say *which* pairs fall short: the touching fraction above 2δ_d by the
size of the smaller piece, and the same distance with each mean taken only over the
voxels within ``--near`` voxels (in-plane units, z scaled by the anisotropy) of the other
piece -- the embeddings the affinities of Eq. 6 actually compare across the boundary.

Several checkpoints are evaluated on the same patches, so their figures compare in one
run.  Prints, saves ``benchmarks/results/embedding_quality.json`` and appends a line to
``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, save  # noqa: E402
from embedseg_daisy.nn.checkpoint import load_checkpoint  # noqa: E402
from embedseg_daisy.nn.cpu import fast_inference  # noqa: E402
from embedseg_daisy.nn.rsunet import crop_center  # noqa: E402
from embedseg_daisy.synth import generate_volume  # noqa: E402
from embedseg_daisy.training.loss import augment_background, local_parts  # noqa: E402

DELTA_D = 1.5
#: upper edges (voxels) of the size bins of the smaller piece of a touching pair
SIZE_BINS = (500, 2000, 10000)
#: z is sectioned ~2.4x coarser than x/y (29 vs 12 nm): distances in in-plane voxels
ANISOTROPY = (29 / 12, 1.0, 1.0)


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    fp = float((pred & ~truth).sum())
    fn = float((~pred & truth).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1.0)


def touching_pairs(pieces: np.ndarray) -> np.ndarray:
    """(n, 2) sorted pairs of pieces within 3 voxels in-plane of each other (across a membrane)."""
    foot = np.ones((1, 7, 7), bool)
    big = np.iinfo(np.int64).max // 2
    # grey dilation keeps only the largest neighbour: look for the smallest too
    hi = ndimage.grey_dilation(pieces, footprint=foot)
    lo = -ndimage.grey_dilation(-np.where(pieces > 0, pieces, big), footprint=foot)
    found = []
    for other, valid in ((hi, hi > 0), (lo, lo < big // 2)):
        m = (pieces > 0) & valid & (pieces != other)
        found.append(np.sort(np.stack([pieces[m], other[m]], 1), axis=1))
    return np.unique(np.concatenate(found), axis=0)


def patch_stats(emb: np.ndarray, labels: np.ndarray, *, near: float = 8.0, min_size: int = 50) -> dict:
    """Per-object spreads and per-touching-pair distances of one patch (see module docstring)."""
    pieces = local_parts(labels)
    ids, counts = np.unique(pieces[pieces > 0], return_counts=True)
    size = dict(zip(ids.tolist(), counts.tolist()))
    # the ground-truth object of each piece: pieces of one object are not "between objects"
    owner = dict(zip(pieces[pieces > 0].tolist(), labels[pieces > 0].tolist()))
    flat = emb.reshape(emb.shape[0], -1)
    lab = pieces.ravel()
    means, spreads = {}, []
    for i in ids[counts >= min_size].tolist():
        vox = flat[:, lab == i]
        means[i] = vox.mean(axis=1)
        spreads.append(float(np.abs(vox - means[i][:, None]).sum(axis=0).mean()))
    dist_to: dict[int, np.ndarray] = {}

    def within(piece: int) -> np.ndarray:
        if piece not in dist_to:
            dist_to[piece] = ndimage.distance_transform_edt(pieces != piece, sampling=ANISOTROPY).ravel() <= near
        return dist_to[piece]

    between, smaller, local, same = [], [], [], []
    for a, b in touching_pairs(pieces).tolist():
        if a not in means or b not in means:
            continue
        d = float(np.abs(means[a] - means[b]).sum())
        if owner[a] == owner[b]:
            same.append(d)
            continue
        between.append(d)
        smaller.append(min(size[a], size[b]))
        na, nb = (lab == a) & within(b), (lab == b) & within(a)
        local.append(float(np.abs(flat[:, na].mean(1) - flat[:, nb].mean(1)).sum()) if min(na.sum(), nb.sum()) >= 20 else np.nan)
    return dict(spreads=spreads, between=between, smaller=smaller, local=local, same=same)


def summarise(stats: list[dict], f1_kernel: list[float], f1_raw: list[float], near: float) -> dict:
    cat = {k: np.asarray([v for s in stats for v in s[k]], float) for k in stats[0]}
    spreads, between, smaller = cat["spreads"], cat["between"], cat["smaller"]
    local = cat["local"][~np.isnan(cat["local"])]
    edges = (50, *SIZE_BINS, np.inf)
    by_size = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (smaller >= lo) & (smaller < hi)
        by_size[f"{lo}-{hi if np.isfinite(hi) else 'inf'}"] = {
            "pairs": int(m.sum()),
            "fraction_above_2delta": float((between[m] > 2 * DELTA_D).mean()) if m.any() else None,
        }
    return {
        "objects": int(spreads.size),
        "touching_pairs": int(between.size),
        "within_object_mean_l1_median": float(np.median(spreads)),
        "fraction_objects_within_below_delta": float((spreads < DELTA_D).mean()),
        "between_touching_mean_l1_median": float(np.median(between)),
        "fraction_pairs_between_above_2delta": float((between > 2 * DELTA_D).mean()),
        "between_touching_mean_l1_quartiles": [float(q) for q in np.percentile(between, [25, 50, 75])],
        "fraction_pairs_between_below_delta": float((between < DELTA_D).mean()),
        "fraction_pairs_between_above_2delta_by_smaller_piece_vox": by_size,
        "near_contact_vox": near,
        "near_contact_pairs": int(local.size),
        "near_contact_fraction_above_2delta": float((local > 2 * DELTA_D).mean()),
        "near_contact_median": float(np.median(local)),
        "same_object_piece_pairs": int(cat["same"].size),
        "same_object_piece_mean_l1_median": float(np.median(cat["same"])) if cat["same"].size else None,
        "mask_f1_vs_training_target": float(np.mean(f1_kernel)),
        "mask_f1_vs_label0": float(np.mean(f1_raw)),
    }


def net_patches(model, spec, raw: np.ndarray, corners):
    """Per patch at ``corners`` (z, y, x voxels) of ``raw`` (float, 0-1): the net's
    embedding ``(D, Z, Y, X)`` and P(background) ``(Z, Y, X)``, both cropped to the
    output, and the slices of the volume that the crop covers."""
    inp, out = np.asarray(spec.input_shape), np.asarray(spec.output_crop)
    ctx = (inp - out) // 2
    for begin in corners:
        x = torch.from_numpy(np.ascontiguousarray(raw[tuple(slice(b, b + i) for b, i in zip(begin, inp))]))
        with torch.inference_mode():
            o = model(x[None, None])
        emb = crop_center(o.embedding, tuple(out))[0].float().numpy()
        bg = torch.sigmoid(crop_center(o.mask_logit, tuple(out)))[0, 0].float().numpy()
        yield emb, bg, tuple(slice(b + c, b + c + s) for b, c, s in zip(begin, ctx, out))


def evaluate(model, spec, vol, raw: np.ndarray, target_bg: np.ndarray, corners, *, theta_mask: float, near: float):
    """Per-patch statistics of one net on the patches at ``corners`` of one volume:
    ``(stats, f1_kernel, f1_raw)``, the inputs of :func:`summarise`.  ``raw`` (float,
    0-1) and ``target_bg`` (the training target's background) are the volume's,
    computed once."""
    stats, f1_kernel, f1_raw = [], [], []
    for emb, bg, window in net_patches(model, spec, raw, corners):
        stats.append(patch_stats(emb, vol.labels[window], near=near))
        pred = bg >= theta_mask
        f1_kernel.append(f1(pred, target_bg[window]))
        f1_raw.append(f1(pred, vol.labels[window] == 0))
    return stats, f1_kernel, f1_raw


def volume_problem(seeds, shape, input_shape, patches: int) -> str | None:
    """What is wrong with a request for held-out volumes and patches, or ``None``."""
    trained_on = sorted(set(seeds) & set(range(1, 10)))
    if trained_on:
        return f"--seeds {trained_on}: seeds 1-9 made the training and validation volumes"
    if len(set(seeds)) != len(seeds):
        return f"--seeds {list(seeds)}: a volume given twice would count twice"
    if patches < 1:
        return "--patches must be at least 1"
    if any(s < i for s, i in zip(shape, input_shape)):
        return f"--shape {list(shape)} is smaller than the net's input patch {list(input_shape)} (z, y, x)"
    return None


def patch_corners(seed: int, volume_shape, input_shape, n: int) -> list[list[int]]:
    """``n`` random patch corners (z, y, x voxels) of the held-out volume ``seed``: one
    generator per volume, so a volume's patches do not depend on the other volumes measured."""
    rng = np.random.default_rng(seed)
    return [[int(rng.integers(0, s - i + 1)) for s, i in zip(volume_shape, input_shape)] for _ in range(n)]


def volume_figures(summary: dict) -> dict:
    """The acceptance figures of one volume's summary (what ``per_volume`` keeps)."""
    keys = (
        "objects",
        "touching_pairs",
        "fraction_pairs_between_above_2delta",
        "between_touching_mean_l1_median",
        "fraction_objects_within_below_delta",
        "mask_f1_vs_training_target",
    )
    return {k: summary[k] for k in keys}


def _name(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", nargs="+", default=[str(ROOT / "checkpoints" / "embedding_tiny.pt")])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(range(3001, 3017)),
        help="held-out volume seeds (default 3001-3016)",
    )
    parser.add_argument("--patches", type=int, default=12, help="random patches per volume")
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 384, 384], metavar=("Z", "Y", "X"))
    parser.add_argument("--theta-mask", type=float, default=0.6)
    parser.add_argument("--near", type=float, default=8.0, help="near-contact radius, in-plane voxels")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    info = machine()
    nets, input_shape = {}, None
    for ckpt in args.checkpoint:
        model, spec = load_checkpoint(ckpt, expected_kind="embedding")
        input_shape = input_shape or tuple(spec.input_shape)
        if tuple(spec.input_shape) != input_shape:
            parser.error(f"{ckpt}: input shape {spec.input_shape} differs from the first checkpoint's")
        nets[_name(ckpt)] = (fast_inference(model), spec)
    problem = volume_problem(args.seeds, args.shape, input_shape, args.patches)
    if problem:
        parser.error(problem)
    pooled = {name: ([], [], []) for name in nets}
    per_volume: dict[str, dict] = {name: {} for name in nets}
    seconds = dict.fromkeys(nets, 0.0)
    for seed in args.seeds:
        vol = generate_volume(tuple(args.shape), seed)
        raw = vol.raw.astype(np.float32) / 255.0
        target_bg = augment_background(vol.labels) == 0
        # every net sees the same patches
        corners = patch_corners(seed, vol.raw.shape, input_shape, args.patches)
        for name, (model, spec) in nets.items():
            t0 = time.time()
            parts = evaluate(model, spec, vol, raw, target_bg, corners, theta_mask=args.theta_mask, near=args.near)
            seconds[name] += time.time() - t0
            for acc, new in zip(pooled[name], parts):
                acc.extend(new)
            per_volume[name][str(seed)] = v = volume_figures(summarise(*parts, args.near))
            print(
                f"  seed {seed} {name}: touching > 2δ_d {v['fraction_pairs_between_above_2delta']:.3f} "
                f"(n={v['touching_pairs']}), objects < δ_d {v['fraction_objects_within_below_delta']:.3f}",
                flush=True,
            )
    results = {}
    for name in nets:
        results[name] = r = summarise(*pooled[name], args.near)
        fractions = [v["fraction_pairs_between_above_2delta"] for v in per_volume[name].values()]
        r["per_volume"] = per_volume[name]
        r["volumes_with_most_touching_pairs_above_2delta"] = int(sum(f > 0.5 for f in fractions))
        r["seconds"] = seconds[name]
        print(
            f"{name}: touching pairs > 2δ_d {r['fraction_pairs_between_above_2delta']:.3f} "
            f"(median {r['between_touching_mean_l1_median']:.2f}, n={r['touching_pairs']}; per volume "
            f"{min(fractions):.3f}-{max(fractions):.3f}, > 0.5 in {r['volumes_with_most_touching_pairs_above_2delta']}"
            f"/{len(fractions)}), near contact {r['near_contact_fraction_above_2delta']:.3f}; "
            f"objects < δ_d {r['fraction_objects_within_below_delta']:.3f}; "
            f"mask F1 {r['mask_f1_vs_training_target']:.3f}",
            flush=True,
        )
    report = {
        "command": "python benchmarks/embedding_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "seeds": args.seeds,
        "shape": args.shape,
        "patches_per_volume": args.patches,
        "checkpoints": results,
    }
    headline = "; ".join(
        f"{k}: touching > 2δ_d {r['fraction_pairs_between_above_2delta']:.3f} (n={r['touching_pairs']}, "
        f"{len(args.seeds)} volumes, > 0.5 in {r['volumes_with_most_touching_pairs_above_2delta']}), "
        f"near contact {r['near_contact_fraction_above_2delta']:.3f}, objects < δ_d "
        f"{r['fraction_objects_within_below_delta']:.3f}, mask F1 {r['mask_f1_vs_training_target']:.3f}"
        for k, r in results.items()
    )
    save("embedding_quality", report, headline, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
