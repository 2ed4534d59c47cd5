"""CPU training-step time of the embedding net: float32 vs bfloat16 autocast.

    python benchmarks/train_step.py [--widths 16,32,64 16,32,64,64] [--batch 1 2] [--steps 6]

Each figure is ``embedseg_daisy.train`` itself (``training.loop.train``) run for
``--steps`` steps on a synthetic volume (seed 3002, never used for training) without
validation: patch sampling and augmentation, forward on ``(N, 1, 20, 128, 128)``, the
Eq. 5 loss, backward, AMSGrad.  The loop's own per-step timings (``s_per_step`` in
``metrics.jsonl``, ``log_every = 1``) are read back; the first step is a warm-up and the
median of the rest is reported, in seconds per step and per sample.  Three settings, on
the same patches (same seed), in one process:

* ``float32``: ``cpu_onednn = false``, PyTorch's own convolution dispatch;
* ``float32+onednn``: the route of ``embedseg_daisy.nn.cpu`` (the default);
* ``bfloat16``: ``cpu_amp = true`` (needs native bfloat16: AVX512-BF16 or AMX; elsewhere
  the loop falls back to float32, which the report's ``bf16_native`` says).

Prints, saves ``benchmarks/results/train_step.json`` and appends a line to
``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, save  # noqa: E402
from embedseg_daisy.synth import generate_volume  # noqa: E402
from embedseg_daisy.training.config import parse_train_config  # noqa: E402
from embedseg_daisy.training.loop import cpu_bf16_native, train  # noqa: E402

#: training-config fields of each setting
MODES = {
    "float32": {"cpu_onednn": False},
    "float32+onednn": {"cpu_onednn": True},
    "bfloat16": {"cpu_amp": True},
}


def step_times(volume: Path, widths: tuple[int, ...], batch: int, mode: str, steps: int, threads: int, work: Path) -> list[float]:
    """Seconds per step of a ``steps``-step training run (the first is the warm-up)."""
    out = work / f"{'-'.join(map(str, widths))}_b{batch}_{mode}"
    cfg = parse_train_config(dict(
        kind="embedding", model={"preset": "tiny", "widths": list(widths)},
        train=[{"path": str(volume)}], out_dir=str(out), steps=steps, log_every=1, val_every=0,
        checkpoint_every=steps, batch_size=batch, seed=0, device="cpu", num_threads=threads,
        progress=False, **MODES[mode],
    ))
    train(cfg)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["s_per_step"] for r in recs if r["split"] == "train"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", nargs="+", default=["16,32,64", "16,32,64,64"], help="comma-separated widths per net")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    info = machine()
    info["bf16_native"] = cpu_bf16_native()
    info["torch"] = torch.__version__
    vol = generate_volume((24, 256, 256), 3002)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "volume.npz"
        np.savez(volume, raw=vol.raw, labels=vol.labels)
        for w in args.widths:
            widths = tuple(int(v) for v in w.split(","))
            for batch in args.batch:
                per = {}
                for mode in MODES:
                    t = step_times(volume, widths, batch, mode, args.steps, args.threads, Path(tmp))
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
