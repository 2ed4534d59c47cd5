"""Does a net sit at its loss's own embedding scale?  The paper's embedding loss and the
touching-pair figure with the net's embeddings multiplied by a factor s.

    python benchmarks/embedding_loss_scale.py [--checkpoint A.pt] [--seeds 3001 ...]
        [--patches 12] [--scales 0.8 0.9 1.0 1.1 1.2]

Why: L_int (Eq. 1, squared, no margin) pulls every object together while L_ext (Eq. 2)
pushes touching objects only up to 2δ_d, so training settles at the scale where the two
balance.  If the loss is lowest near s = 1 while the touching figure
(``embedding_quality.py``) needs a larger s, more training on the same loss cannot raise
the figure by spreading the embeddings: only a net that separates objects better
relative to their spread can.  Loss terms are Eqs. 1-4 on the same held-out patches as
``embedding_quality.py`` (its volumes, seeds and patch corners), with parts and
background from the training target (3×3×1 kernel, local connected components).
Prints, saves ``benchmarks/results/embedding_loss_scale.json`` and appends a line to
``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, save  # noqa: E402
from embedding_quality import DELTA_D, net_patches, patch_corners, patch_stats, volume_problem  # noqa: E402
from embedseg_daisy.nn.checkpoint import load_checkpoint  # noqa: E402
from embedseg_daisy.nn.cpu import fast_inference  # noqa: E402
from embedseg_daisy.synth import generate_volume  # noqa: E402
from embedseg_daisy.training.loss import augment_background, discriminative_loss, local_parts  # noqa: E402


def scaled_losses(emb: torch.Tensor, target: np.ndarray, scales) -> np.ndarray:
    """``(len(scales), 4)``: (L_embedding, L_int, L_ext, L_reg) of ``emb * s`` for one
    patch; ``emb`` (D, Z, Y, X), ``target`` the labels after the background kernel."""
    parts = torch.from_numpy(local_parts(target))[None]
    parents = torch.from_numpy(target.astype(np.int64))[None]
    return np.array([[float(t) for t in discriminative_loss(emb[None] * s, parts, parents)] for s in scales])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "embedding_tiny.pt"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(3001, 3017)))
    parser.add_argument("--patches", type=int, default=12, help="random patches per volume")
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 384, 384], metavar=("Z", "Y", "X"))
    parser.add_argument("--scales", type=float, nargs="+", default=[0.8, 0.9, 1.0, 1.1, 1.2])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if min(args.scales) <= 0:
        parser.error(f"--scales {args.scales}: every factor must be positive")
    info = machine()
    model, spec = load_checkpoint(args.checkpoint, expected_kind="embedding")
    problem = volume_problem(args.seeds, args.shape, spec.input_shape, args.patches)
    if problem:
        parser.error(problem)
    model = fast_inference(model)
    losses, between = [], []
    for seed in args.seeds:
        vol = generate_volume(tuple(args.shape), seed)
        # the training target, made once per volume as embedding_quality.py makes its background
        target = augment_background(vol.labels).astype(np.int64)
        corners = patch_corners(seed, vol.raw.shape, spec.input_shape, args.patches)
        for emb, _, window in net_patches(model, spec, vol.raw.astype(np.float32) / 255.0, corners):
            losses.append(scaled_losses(torch.from_numpy(emb), target[window], args.scales))
            between += patch_stats(emb, vol.labels[window])["between"]
    mean = np.mean(losses, axis=0)
    between = np.asarray(between)
    rows = []
    for s, (total, l_int, l_ext, l_reg) in zip(args.scales, mean):
        rows.append(
            {
                "scale": s,
                "loss": total,
                "internal": l_int,
                "external": l_ext,
                "regularisation": l_reg,
                "fraction_touching_above_2delta": float((between * s > 2 * DELTA_D).mean()),
            }
        )
        print(
            f"s = {s:.2f}: loss {total:.4f} (int {l_int:.4f}, ext {l_ext:.4f}, reg {l_reg:.3f}); "
            f"touching > 2δ_d {rows[-1]['fraction_touching_above_2delta']:.3f}",
            flush=True,
        )
    best = min(rows, key=lambda r: r["loss"])
    report = {
        "command": "python benchmarks/embedding_loss_scale.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "checkpoint": args.checkpoint,
        "seeds": args.seeds,
        "patches_per_volume": args.patches,
        "touching_pairs": int(between.size),
        "scales": rows,
        "lowest_loss_scale": best["scale"],
    }
    headline = f"lowest loss at s = {best['scale']}; " + ", ".join(
        f"s={r['scale']}: loss {r['loss']:.3f}, touching > 2δ_d {r['fraction_touching_above_2delta']:.3f}" for r in rows
    )
    save("embedding_loss_scale", report, headline, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
