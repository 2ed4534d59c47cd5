"""Predict-stage throughput: the whole ``predict_box`` path vs the bare network forward.

    python benchmarks/predict.py                       # tiny preset if embedseg_daisy.nn exists
    python benchmarks/predict.py --net standin --width 16
    python benchmarks/predict.py --volume 32 192 192 --repeats 5 --device cuda

Both paths run the same lattice patches in the same batches (``--batch-size``): the bare
forward times only ``model(x)`` on pre-read batches; ``predict_box`` times reading raw
(mirror-padded in-memory array), the forward, Eq. 6 affinities per patch, blending and
the copy back.  Throughput is output voxels of the box per second; the figure of merit
is ``ratio = t(predict_box) / t(bare forward)`` (goal <= 1.15).  Medians of
``--repeats`` runs after one warm-up run; the per-phase profile (seconds, median run)
shows where the non-forward time goes.  Results: printed and written as JSON to
``benchmarks/results/predict.json`` (``--out``).

The machine may be shared: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedseg_daisy.blending import get_lattice  # noqa: E402
from embedseg_daisy.inference import array_reader, predict_box  # noqa: E402
from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE  # noqa: E402

OFFSETS = PAPER_ATTRACTIVE + PAPER_REPULSIVE


# --------------------------------------------------------------- stand-in network
class _Out(NamedTuple):
    embedding: torch.Tensor
    mask_logit: torch.Tensor


class _Res(nn.Module):
    def __init__(self, cin: int, c: int):
        super().__init__()
        self.entry = nn.Conv3d(cin, c, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv3d(c, c, 3, padding=1) for _ in range(2))
        self.norms = nn.ModuleList(nn.InstanceNorm3d(c, affine=True) for _ in range(3))

    def forward(self, x):
        skip = torch.relu(self.norms[0](self.entry(x)))
        h = torch.relu(self.norms[1](self.convs[0](skip)))
        h = self.convs[1](h)
        return torch.relu(self.norms[2](h + skip))


class StandInRSUNet(nn.Module):
    """RSUNet-like stand-in: residual modules at two scales ((1, 2, 2) pooling),
    bilinear-resize up-path, 24-d embedding + mask logit head."""

    def __init__(self, width: int = 16, dim: int = 24):
        super().__init__()
        self.enc0 = _Res(1, width)
        self.enc1 = _Res(width, 2 * width)
        self.up = nn.Conv3d(2 * width, width, 1)
        self.dec0 = _Res(width, width)
        self.head = nn.Conv3d(width, dim + 1, 3, padding=1)
        self.dim = dim

    def forward(self, x):
        e0 = self.enc0(x)
        e1 = self.enc1(nn.functional.max_pool3d(e0, (1, 2, 2)))
        u = nn.functional.interpolate(e1, scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
        h = self.dec0(self.up(u) + e0)
        out = self.head(h)
        return _Out(0.1 * out[:, : self.dim], out[:, self.dim :])


def build_net(args, device: torch.device) -> tuple[nn.Module, str]:
    if args.net in ("auto", "preset"):
        try:
            from embedseg_daisy.nn import build_model, get_preset

            spec = get_preset(args.preset)
            model = build_model(spec)
            if device.type == "cpu":
                from embedseg_daisy.nn.cpu import fast_inference

                model = fast_inference(model)
            return model.to(device).eval(), f"embedseg_daisy.nn preset {args.preset!r} (widths {spec.widths})"
        except ImportError as exc:
            if args.net == "preset":
                raise
            print(f"embedseg_daisy.nn not importable ({exc}); using the stand-in net", file=sys.stderr)
    torch.manual_seed(0)
    return StandInRSUNet(args.width).to(device).eval(), f"stand-in RSUNet-like net, width {args.width}"


# ---------------------------------------------------------------------- FLOPs
#: Dense fp16/bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name fragment.
PEAK_TFLOPS_FP16 = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0}


def forward_gflop_per_patch(preset: str, input_patch) -> float:
    """Convolution and matmul FLOPs (2 per multiply-add) of one forward on one patch,
    counted by ``torch.utils.flop_counter`` on the CPU (the count does not depend on
    the device)."""
    from torch.utils.flop_counter import FlopCounterMode

    from embedseg_daisy.nn import build_model, get_preset

    model = build_model(get_preset(preset)).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros((1, 1) + tuple(input_patch)))
    return counter.get_total_flops() / 1e9


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS_FP16.items():
        if key in device_name:
            return value
    return None


def add_flop_rates(run: dict, gflop: float) -> dict:
    """Achieved TFLOP/s of the bare forward and of the stage, and their fraction of the
    device's fp16 peak (CUDA runs with autocast only)."""
    tb, tp = statistics.median(run["seconds_bare_forward"]), statistics.median(run["seconds_predict_box"])
    run["gflop_per_patch"] = round(gflop, 3)
    run["tflops_bare_forward"] = run["patches"] * gflop / tb / 1e3
    run["tflops_predict_box"] = run["patches"] * gflop / tp / 1e3
    peak = peak_tflops(run["device"]) if run["device"].startswith("cuda") and run["amp_float16"] else None
    if peak:
        run["peak_tflops_fp16"] = peak
        run["fraction_of_peak_bare_forward"] = run["tflops_bare_forward"] / peak
        run["fraction_of_peak_predict_box"] = run["tflops_predict_box"] / peak
    return run


# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(model, batches, device, amp: bool) -> float:
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            if amp:
                with torch.autocast(device_type=device.type, dtype=torch.float16):
                    model(x)
            else:
                model(x)
    _sync(device)
    return time.perf_counter() - t


def run_device(args, device: torch.device, amp: bool) -> dict:
    model, net_name = build_net(args, device)
    shape = tuple(args.volume)
    out_patch, in_patch = tuple(args.output_patch), tuple(args.input_patch)
    raw = np.random.default_rng(0).random(shape).astype(np.float32)
    read = array_reader(raw)
    box = ((0, 0, 0), shape)
    lat = get_lattice(shape, out_patch)
    patches = lat.patches_touching(box)
    bs = args.batch_size
    batches = []
    for i in range(0, len(patches), bs):
        x = np.zeros((bs, 1) + in_patch, np.float32)
        for j, p in enumerate(patches[i : i + bs]):
            x[j, 0] = read(p.input_box(out_patch, in_patch))
        batches.append(torch.from_numpy(x).to(device))
    # quantize: the stage writes uint8 and quantises where it blended (on the GPU)
    kw = dict(output_patch=out_patch, input_patch=in_patch, batch_size=bs, device=device, amp=amp, quantize=True)

    # warm-up (oneDNN primitive creation, CUDA context / cuDNN heuristics)
    bare_forward(model, batches[:1], device, amp)
    predict_box(model, read, box, shape, OFFSETS, **kw)

    t_bare, t_pred, profiles = [], [], []
    for _ in range(args.repeats):  # interleaved so that load changes hit both alike
        t_bare.append(bare_forward(model, batches, device, amp))
        prof: dict[str, float] = {}
        _sync(device)
        t = time.perf_counter()
        predict_box(model, read, box, shape, OFFSETS, profile=prof if device.type == "cpu" else None, **kw)
        _sync(device)
        t_pred.append(time.perf_counter() - t)
        profiles.append(prof)
    if device.type == "cuda":  # a separate profiled run: profiling synchronises per phase
        prof = {}
        predict_box(model, read, box, shape, OFFSETS, profile=prof, **kw)
        profiles = [prof] * len(t_pred)
    nvox = int(np.prod(shape))
    mb, mp = statistics.median(t_bare), statistics.median(t_pred)
    med_prof = profiles[int(np.argsort(t_pred)[len(t_pred) // 2])]
    return {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "net": net_name,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "amp_float16": bool(amp),
        "volume": list(shape),
        "output_patch": list(out_patch),
        "input_patch": list(in_patch),
        "batch_size": bs,
        "patches": len(patches),
        "batches": len(batches),
        "repeats": args.repeats,
        "seconds_bare_forward": t_bare,
        "seconds_predict_box": t_pred,
        "voxels_per_s_bare_forward": nvox / mb,
        "voxels_per_s_predict_box": nvox / mp,
        "patches_per_s_predict_box": len(patches) / mp,
        "ratio_predict_over_bare": mp / mb,
        "profile_seconds": {k: round(v, 4) for k, v in med_prof.items()},
        "non_forward_seconds_per_patch": (med_prof.get("total", mp) - med_prof.get("forward", mb)) / len(patches),
    }


def blockwise_patch_factor(block, output_patch, volume=(128, 1536, 1536)) -> dict:
    """Patches computed by a blockwise run (every block runs every patch touching it)
    divided by the lattice size, on a large volume (counting only, no network)."""
    lat = get_lattice(volume, output_patch)
    per_axis = []
    for a in range(3):
        n = 0
        for b in range(0, volume[a], block[a]):
            n += len(lat.axis_range_touching(a, b, min(b + block[a], volume[a])))
        per_axis.append(n / len(lat.origins[a]))
    return {
        "block": list(block),
        "volume": list(volume),
        "factor": float(np.prod(per_axis)),
        "per_axis": [round(f, 4) for f in per_axis],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=["auto", "preset", "standin"], default="auto")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--width", type=int, default=16, help="stand-in net width")
    ap.add_argument("--volume", type=int, nargs=3, default=[24, 192, 192])
    ap.add_argument("--output-patch", type=int, nargs=3, default=[16, 96, 96])
    ap.add_argument("--input-patch", type=int, nargs=3, default=[20, 128, 128])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, plus CUDA if available"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument(
        "--stage-block", type=int, nargs=3, default=[32, 384, 384],
        help="report how many more patches a blockwise run with this write block computes (counting only)",
    )
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "predict.json"))
    ap.add_argument(
        "--annotate", nargs="+", metavar="JSON",
        help="add FLOP rates and fraction of peak to result files written earlier (no timing; CPU is enough)",
    )
    args = ap.parse_args(argv)
    if args.annotate:
        for path in args.annotate:
            result = json.loads(Path(path).read_text())
            for r in result["runs"]:
                preset = r["net"].split("'")[1] if "preset" in r["net"] else None
                if preset:
                    add_flop_rates(r, forward_gflop_per_patch(preset, r["input_patch"]))
                    print(f"{path}: {r['device']} amp={r['amp_float16']} batch {r['batch_size']}: "
                          f"{r['tflops_bare_forward']:.1f} TFLOP/s bare, {r['tflops_predict_box']:.1f} stage"
                          + (f", {100 * r['fraction_of_peak_bare_forward']:.1f}% / "
                             f"{100 * r['fraction_of_peak_predict_box']:.1f}% of fp16 peak"
                             if "peak_tflops_fp16" in r else ""))
            Path(path).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = []
    load_before = os.getloadavg()
    gflop = forward_gflop_per_patch(args.preset, args.input_patch) if args.net != "standin" else None
    if args.device in ("auto", "cpu"):
        runs.append(run_device(args, torch.device("cpu"), amp=False))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        dev = torch.device("cuda")
        runs.append(run_device(args, dev, amp=False))
        runs.append(run_device(args, dev, amp=True))
    if gflop is not None:
        runs = [add_flop_rates(r, gflop) for r in runs]
    result = {
        "benchmark": "predict_box vs bare forward",
        "blockwise_patch_factor": blockwise_patch_factor(args.stage_block, args.output_patch),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "goal_ratio": 1.15,
        "runs": runs,
    }
    for r in runs:
        tb, tp = statistics.median(r["seconds_bare_forward"]), statistics.median(r["seconds_predict_box"])
        print(
            f"{r['device']:>8} {r['net']}: {r['patches']} patches, batch {r['batch_size']}, amp={r['amp_float16']}\n"
            f"   bare forward  {r['voxels_per_s_bare_forward'] / 1e3:9.1f} kvox/s  (median {tb:.2f} s)\n"
            f"   predict_box   {r['voxels_per_s_predict_box'] / 1e3:9.1f} kvox/s  (median {tp:.2f} s)\n"
            f"   ratio {r['ratio_predict_over_bare']:.3f} (goal <= 1.15); "
            f"non-forward {1e3 * r['non_forward_seconds_per_patch']:.1f} ms/patch\n"
            f"   profile {r['profile_seconds']}"
            + (f"\n   {r['tflops_bare_forward']:.2f} TFLOP/s bare forward" if "tflops_bare_forward" in r else "")
            + (f" = {100 * r['fraction_of_peak_bare_forward']:.1f}% of the fp16 peak" if "peak_tflops_fp16" in r else "")
        )
    f = result["blockwise_patch_factor"]
    print(
        f"blockwise run with write block {f['block']}: {f['factor']:.3f}x the lattice's patches "
        f"(per axis {f['per_axis']})"
    )
    print(f"load average before {result['loadavg_before']}, after {result['loadavg_after']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
