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

from embedseg_daisy.nn.checkpoint import load_checkpoint, save_checkpoint
from embedseg_daisy.nn.presets import ModelSpec
from embedseg_daisy.nn.rsunet import RSUNet, build_model


def bottom_features(model: RSUNet, x: torch.Tensor) -> torch.Tensor:
    """Output ``(N, widths[-1], ...)`` of the coarsest encoder module for input ``x``."""
    for i, module in enumerate(model.down):
        x = module(x)
        if i < model.spec.depth:
            x = model.pool(x)
    return x


def grow_one_scale(model: RSUNet, calibration: torch.Tensor, eps: float | None = None) -> RSUNet:
    """A net with one more scale (``widths + (widths[-1],)``) that starts as ``model``.

    ``calibration``: input patches ``(N, in_channels, Z, Y, X)`` on which the old
    bottom features' per-channel statistics are measured (averaged over the N patches).
    The new coarsest level needs the patch's y and x to be multiples of
    ``2**(depth + 1)``.  Returns a new net in eval mode; ``model`` is not modified.
    """
    spec = model.spec
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
        if state[key].shape != value.shape:  # pragma: no cover - guarded by the widths rule
            raise RuntimeError(f"grow_one_scale: {key} has shape {tuple(state[key].shape)}, trained {tuple(value.shape)}")
        state[key] = value.detach().clone()
    grown.load_state_dict(state)

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        f = bottom_features(model, calibration.float())
    model.train(was_training)
    up = grown.up[0]
    eps = up.norm.eps if eps is None else eps
    mean = f.mean(dim=(2, 3, 4)).mean(0)
    std = (f.var(dim=(2, 3, 4), unbiased=False) + eps).sqrt().mean(0)
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


def _read_raw(path: Path, raw: str) -> np.ndarray:
    """``raw`` of a zarr container or an .npz file as float32 in [0, 1] (as training reads it)."""
    if not path.exists():
        raise SystemExit(f"{path}: no such calibration volume")
    if path.suffix == ".npz":
        with np.load(path) as data:
            if raw not in data:
                raise SystemExit(f"{path}: no array named {raw!r} (has {sorted(data.files)})")
            a = data[raw]
    else:
        from funlib.persistence import open_ds

        try:
            arr = open_ds(str(path / raw))
        except Exception as e:
            raise SystemExit(f"{path}/{raw}: cannot open dataset ({type(e).__name__}: {e})") from None
        a = np.asarray(arr[arr.roi])
    if a.ndim != 3:
        raise SystemExit(f"{path}/{raw}: expected a (z, y, x) array, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    raise SystemExit(f"{path}/{raw}: dtype {a.dtype} is not supported (uint8 or float in [0, 1])")


def _calibration_patches(path: Path, raw: str, shape: tuple[int, int, int], n: int, seed: int) -> torch.Tensor:
    volume = _read_raw(path, raw)
    if any(s < p for s, p in zip(volume.shape, shape)):
        raise SystemExit(f"{path}/{raw}: shape {volume.shape} is smaller than the net's input {shape}")
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
    model, spec = load_checkpoint(args.checkpoint)
    f = 2 ** (spec.depth + 1)
    if spec.input_shape[1] % f or spec.input_shape[2] % f:
        parser.error(f"{args.checkpoint}: input y, x {spec.input_shape[1:]} are not multiples of {f}, "
                     "as one more scale needs")
    torch.manual_seed(args.seed)  # the new encoder module's initial weights
    cal = _calibration_patches(args.calibrate, args.raw, tuple(spec.input_shape), args.patches, args.seed)
    grown = grow_one_scale(model, cal)
    save_checkpoint(args.out, grown, grown.spec)
    print(f"{args.checkpoint} (widths {list(spec.widths)}) -> {args.out} (widths {list(grown.spec.widths)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
