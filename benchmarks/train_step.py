"""CPU training-step time of the embedding net: float32 vs bfloat16 autocast.

    python benchmarks/train_step.py [--widths 16,32,64 16,32,64,64] [--batch 1 2] [--steps 5]

One step is what ``embedseg_daisy.train`` does per batch: forward on ``(N, 1, 20, 128,
128)`` patches, the Eq. 5 loss on synthetic ground truth (through the Fig. S4 kernel and
local connected components, as the sampler prepares it), backward, AMSGrad.  Three ways
to run it, all in one process on the same patches so the figures compare:

* ``float32``: PyTorch's own convolution dispatch;
* ``float32+onednn``: the route of ``embedseg_daisy.nn.cpu`` (``cpu_onednn``, default);
* ``bfloat16``: ``cpu_amp`` -- autocast to bfloat16 (oneDNN's AVX512-BF16/AMX kernels;
  on a CPU without them the figure is for emulated bfloat16 and training refuses it).

The median of ``--steps`` steps after one warm-up step is reported, in seconds per step
and per sample.  Prints, saves ``benchmarks/results/train_step.json`` and appends a line
to ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, save  # noqa: E402
from embedseg_daisy.nn.cpu import use_onednn  # noqa: E402
from embedseg_daisy.nn.presets import get_preset  # noqa: E402
from embedseg_daisy.nn.rsunet import build_model  # noqa: E402
from embedseg_daisy.synth import generate_volume  # noqa: E402
from embedseg_daisy.training.loop import cpu_bf16_native  # noqa: E402
from embedseg_daisy.training.loss import augment_background, embedding_loss, local_parts  # noqa: E402

MODES = ("float32", "float32+onednn", "bfloat16")


def step_times(widths: tuple[int, ...], batch: int, mode: str, raw: np.ndarray, labels: np.ndarray, steps: int) -> list[float]:
    """Seconds of ``steps + 1`` training steps (the first is the warm-up)."""
    torch.manual_seed(0)
    spec = get_preset("tiny", "embedding", widths=widths)
    model = build_model(spec)
    use_onednn(model, mode == "float32+onednn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    inp, out = spec.input_shape, spec.output_crop
    ctx = [(i - o) // 2 for i, o in zip(inp, out)]
    x = torch.stack([torch.from_numpy(raw[:inp[0], k * 64 : k * 64 + inp[1], : inp[2]]) for k in range(batch)])[:, None]
    lab = np.stack(
        [augment_background(labels[ctx[0] : ctx[0] + out[0], k * 64 + ctx[1] : k * 64 + ctx[1] + out[1], ctx[2] : ctx[2] + out[2]])
         for k in range(batch)]
    ).astype(np.int64)
    parts = torch.from_numpy(np.stack([local_parts(s) for s in lab]))
    lab_t = torch.from_numpy(lab)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bfloat16"):
            terms = embedding_loss(model(x), lab_t, parts=parts)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    if not np.isfinite(float(terms.total.detach())):
        raise RuntimeError(f"{mode}: non-finite loss")
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", nargs="+", default=["16,32,64", "16,32,64,64"], help="comma-separated widths per net")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine()
    info["bf16_native"] = cpu_bf16_native()
    info["torch"] = torch.__version__
    vol = generate_volume((24, 384, 256), 3002)
    raw = vol.raw.astype(np.float32) / 255.0
    rows = []
    for w in args.widths:
        widths = tuple(int(v) for v in w.split(","))
        for batch in args.batch:
            per = {}
            for mode in MODES:
                t = step_times(widths, batch, mode, raw, vol.labels, args.steps)
                per[mode] = statistics.median(t[1:])
                print(f"widths {list(widths)} batch {batch} {mode:15s} {per[mode]:.2f} s/step "
                      f"({per[mode] / batch:.2f} s/sample)", flush=True)
            rows.append({
                "widths": list(widths), "batch": batch, "s_per_step": per,
                "s_per_sample": {m: v / batch for m, v in per.items()},
                "bfloat16_speedup_vs_onednn": per["float32+onednn"] / per["bfloat16"],
            })
    report = {
        "command": "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info, "threads": args.threads, "steps": args.steps, "rows": rows,
    }
    headline = "; ".join(
        f"{'-'.join(map(str, r['widths']))} b{r['batch']}: "
        + ", ".join(f"{m} {v:.2f}" for m, v in r["s_per_step"].items())
        + f" s/step (bf16 {r['bfloat16_speedup_vs_onednn']:.2f}x)"
        for r in rows
    ) + f"; native bf16 {info['bf16_native']}"
    save("train_step", report, headline, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
