"""Grow a trained Residual Symmetric U-Net by one coarser scale ("net surgery").

A deeper U-Net sees more context: the receptive field doubles in-plane with each
(1, 2, 2) scale.  Training a deeper net from scratch costs the whole training budget
again, so ``grow_one_scale`` builds the net with one more scale that *starts as the
trained net*: every trained weight is kept, and the new scale's path is initialised
so that it adds nothing and passes the old bottom features through unchanged.
Fine-tuning then only has to learn what the extra context adds.

How the pass-through works (widths ``(..., w)`` become ``(..., w, w)``):

* the new encoder module below the old bottom is freshly initialised; its
  contribution enters the decoder through the new up-module's 1x1x1 projection,
  which starts at **zero** (it still receives gradient, so the path opens in training);
* the new up-module's three InstanceNorms, which would re-standardise the old bottom
  features ``f`` (non-negative, after ReLU), get the affine parameters
  ``weight = s_c, bias = m_c`` where ``m_c, s_c`` are the per-channel mean and standard
  deviation (``sqrt(var + eps)``, as InstanceNorm computes it) of ``f`` on calibration
  patches.  ``IN(f) * s_c + m_c = f`` exactly on a patch with those statistics, and
  the ReLUs after them see non-negative values and change nothing;
* its residual module's entry convolution is the identity (centre tap) and the last
  convolution of its residual branch is zero, so the module returns its input.

With one calibration patch the grown net reproduces the trained net's output on that
patch to float precision; with several, the statistics are averaged and the output
is close on typical patches (InstanceNorm uses each patch's own statistics).

    python -m embedseg_daisy.nn.grow trained.pt grown.pt --calibrate volume.zarr [--patches 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from embedseg_daisy.errors import EmbedsegError, InputError
from embedseg_daisy.nn.checkpoint import load_checkpoint, save_checkpoint
from embedseg_daisy.nn.presets import ModelSpec
from embedseg_daisy.nn.rsunet import RSUNet, build_model
from embedseg_daisy.training.data import read_raw


def grow_one_scale(model: RSUNet, calibration: torch.Tensor) -> RSUNet:
    """A net with one more scale (``widths + (widths[-1],)``) that starts as ``model``.

    ``calibration``: input patches ``(N, in_channels, Z, Y, X)`` on which the old
    bottom features' per-channel statistics are measured (averaged over the N patches).
    The new coarsest level needs the patch's y and x to be multiples of
    ``2**(depth + 1)``.  Returns a new net in eval mode; ``model`` is not modified.
    """
    spec = model.spec
    f = 2 ** (spec.depth + 1)
    if spec.input_shape[1] % f or spec.input_shape[2] % f:
        raise ValueError(
            f"input y, x {tuple(spec.input_shape[1:])} are not multiples of {f}, as one more scale needs"
        )
    fields = spec.model_dump(exclude={"depth", "widths", "training"})
    new_spec = ModelSpec(
        **fields,
        depth=spec.depth + 1,
        widths=(*spec.widths, spec.widths[-1]),
        training={"grown_from": {"widths": list(spec.widths), "training": spec.training}},
    )
    if calibration.ndim != 5 or calibration.shape[1] != spec.in_channels:
        raise ValueError(
            f"calibration patches must be (N, {spec.in_channels}, Z, Y, X), got {tuple(calibration.shape)}"
        )
    grown = build_model(new_spec)
    old_state = model.state_dict()
    state = grown.state_dict()
    for key, value in old_state.items():
        if key.startswith("up."):
            # the new up-module is the first in decoding order: old up.i becomes up.(i+1)
            _, index, rest = key.split(".", 2)
            key = f"up.{int(index) + 1}.{rest}"
        state[key] = value.detach().clone()
    grown.load_state_dict(state)  # raises if a kept weight no longer fits its place

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        bottom = model.encode(calibration.float())[0]
    model.train(was_training)
    up = grown.up[0]
    mean = bottom.mean(dim=(2, 3, 4)).mean(0)
    std = (bottom.var(dim=(2, 3, 4), unbiased=False) + up.norm.eps).sqrt().mean(0)
    with torch.no_grad():
        up.project.weight.zero_()
        for norm in (up.norm, up.module.entry_norm, up.module.out_norm):
            norm.weight.copy_(std)
            norm.bias.copy_(mean)
        entry = up.module.entry.weight
        entry.zero_()
        c = torch.arange(entry.shape[0])
        centre = tuple(k // 2 for k in entry.shape[2:])
        entry[(c, c, *centre)] = 1.0
        up.module.convs[-1].weight.zero_()
    return grown.eval()


def _calibration_patches(path: Path, raw: str, shape: tuple[int, int, int], n: int, seed: int) -> torch.Tensor:
    volume = read_raw(path, raw)
    if any(s < p for s, p in zip(volume.shape, shape)):
        raise InputError(f"{path}/{raw}: shape {volume.shape} is smaller than the net's input {shape}")
    rng = np.random.default_rng(seed)
    patches = []
    for _ in range(n):
        c = [int(rng.integers(0, s - p + 1)) for s, p in zip(volume.shape, shape)]
        patches.append(volume[tuple(slice(a, a + p) for a, p in zip(c, shape))])
    return torch.from_numpy(np.stack(patches))[:, None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grow a trained U-Net checkpoint by one scale.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--calibrate", type=Path, required=True,
                        help="training volume (zarr container or .npz) to measure feature statistics on")
    parser.add_argument("--raw", default="raw", help="raw dataset in --calibrate")
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.patches < 1:
        parser.error(f"--patches must be at least 1, got {args.patches}")
    if args.out.exists():
        parser.error(f"{args.out} exists; not overwriting it")
    try:
        model, spec = load_checkpoint(args.checkpoint)
        torch.manual_seed(args.seed)  # the new encoder module's initial weights
        cal = _calibration_patches(args.calibrate, args.raw, tuple(spec.input_shape), args.patches, args.seed)
        grown = grow_one_scale(model, cal)
    except EmbedsegError as e:  # its messages name the file
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # the net cannot be grown
        print(f"error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    save_checkpoint(args.out, grown, grown.spec)
    print(f"{args.checkpoint} (widths {list(spec.widths)}) -> {args.out} (widths {list(grown.spec.widths)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
