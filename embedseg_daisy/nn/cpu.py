"""Fast CPU convolutions: sidestepping PyTorch's slow ``slow_conv3d`` path.

PyTorch's CPU convolution dispatch (``select_conv_backend``) sends a 3x3x3
convolution to oneDNN only when ``N > 1`` or ``N * C_in * D * H > 20480``; below that
it uses ``slow_conv3d`` (im2col + GEMM).  In the ``tiny`` preset at batch size 1 this
hits the 1-channel input convolution and the two entry convolutions right after each
max-pool (``16 * 20 * 64 = 20480`` and ``32 * 20 * 32 = 20480``, not above the limit);
the same heuristic is applied again in ``convolution_backward``.

Two routes, both toggled per module by :func:`use_onednn`:

* **inference** (no autograd): ``torch.ops.aten.mkldnn_convolution`` is called directly.
* **training** (autograd): :class:`OneDNNConv3dFunction` does the forward with
  ``mkldnn_convolution`` and, for batch size 1, computes the backward with
  ``aten.convolution_backward`` on the batch padded with one zero sample, which makes
  PyTorch select oneDNN (``N > 1``); the zero sample contributes nothing to the
  weight gradient and its input gradient is dropped.  Exact up to float rounding.

Measured here (2 shared cores, Intel Xeon with AVX-512, torch 2.13.0+cpu, 2 threads,
best of 5 in the quietest windows; other jobs on the cores made single runs up to 5x
slower).  Bare forward on ``(1, 1, 20, 128, 128)`` (``python -W ignore -m
embedseg_daisy.nn.cpu --preset tiny --profile``):

=========  ===================  ===================  ========
preset     default dispatch     oneDNN route         speed-up
=========  ===================  ===================  ========
tiny       0.55 s, 0.60 Mvox/s  0.47 s, 0.70 Mvox/s  1.2x
paper      1.09 s, 0.30 Mvox/s  1.07 s, 0.31 Mvox/s  1.02x
=========  ===================  ===================  ========

(input voxels; the output crop (16, 96, 96) is 45 % of them).  In ``tiny`` the three
``slow_conv3d`` calls cost ~0.2 s of a 0.74 s profiled forward; in ``paper`` the seven
slow calls are at low resolution (~65 ms).  The 10x of conventions.md was an 8-16-32
net, where nearly every layer is below the threshold.  Training step (forward,
backward, AMSGrad) of ``tiny`` at batch 1: 1.55 s default, 1.32-1.40 s with the route
(the pool-entry convolutions' backward moved from ``slow_conv3d`` to oneDNN).  Batch 2
cost 4.0-4.7 s per step (2.0-2.3 s per sample), so CPU training uses batch 1.

On a CPU with native bfloat16 (AVX512-BF16/AMX) training's ``cpu_amp`` autocast is
faster still and the route stands aside (PyTorch's dispatch takes oneDNN for bfloat16);
``benchmarks/train_step.py`` compares the three on one machine.
"""

from __future__ import annotations

import torch
from torch import nn

_SMALL = 20480  # PyTorch's threshold on N*C*D*H for 3-D convolutions on CPU


class OneDNNConv3dFunction(torch.autograd.Function):
    """3-D convolution (stride 1, dilation 1, groups 1) forced onto oneDNN on CPU."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.padding = list(padding)
        ctx.has_bias = bias is not None
        return torch.ops.aten.mkldnn_convolution(
            x, weight, bias, list(padding), [1, 1, 1], [1, 1, 1], 1
        )

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        n = x.shape[0]
        grad = grad.contiguous()
        small = n == 1 and x.shape[1] * x.shape[2] * x.shape[3] <= _SMALL
        if small:
            # N > 1 makes PyTorch's backward dispatch choose oneDNN; larger problems
            # already go there at N == 1 and padding would only double their cost.
            x = torch.cat([x, x.new_zeros(x.shape)], 0)
            grad = torch.cat([grad, grad.new_zeros(grad.shape)], 0)
        gi, gw, gb = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            [1, 1, 1],
            ctx.padding,
            [1, 1, 1],
            False,
            [0, 0, 0],
            1,
            mask,
        )
        if gi is not None and small:
            gi = gi[:1]
        return gi, gw, (gb if ctx.has_bias else None), None


def onednn_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding) -> torch.Tensor:
    """Convolve on oneDNN: direct op without autograd, the custom Function with it."""
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return OneDNNConv3dFunction.apply(x, weight, bias, tuple(padding))
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), [1, 1, 1], [1, 1, 1], 1)


def use_onednn(model: nn.Module, enable: bool = True) -> nn.Module:
    """Route every ``embedseg_daisy.nn.rsunet.Conv3d`` of ``model`` to oneDNN on CPU.

    Applies to float32 CPU tensors only; CUDA and other dtypes take the normal path,
    so it is harmless to leave enabled.  Returns ``model``.
    """
    for m in model.modules():
        if hasattr(m, "onednn") and isinstance(m, nn.Conv3d):
            m.onednn = enable
    return model


def fast_inference(model: nn.Module, enable: bool = True) -> nn.Module:
    """Put ``model`` in eval mode with the oneDNN route on (the fast CPU inference path).

    Use together with ``torch.inference_mode()``.  Measured gain (2 cores, bare
    forward on (1, 1, 20, 128, 128)): 1.2x for ``tiny``, ~1.02x for ``paper`` (module
    docstring).
    """
    model.eval()
    return use_onednn(model, enable)


def benchmark_forward(
    model: nn.Module, shape=(20, 128, 128), batch: int = 1, repeat: int = 5, fast: bool = True
) -> dict[str, list[float]]:
    """Wall and process-CPU seconds per bare forward of ``model`` on ``(batch, 1, *shape)``.

    CPU seconds are the more robust number on shared cores (threads wait passively
    with ``OMP_WAIT_POLICY=PASSIVE``; spinning threads would inflate them).
    """
    import time

    use_onednn(model.eval(), fast)
    x = torch.rand(batch, 1, *shape)
    wall, cpu = [], []
    with torch.inference_mode():
        model(x)  # warm-up (oneDNN primitive creation)
        for _ in range(repeat):
            t, c = time.perf_counter(), time.process_time()
            model(x)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return {"wall": wall, "cpu": cpu}


def _main(argv=None) -> int:
    """``python -m embedseg_daisy.nn.cpu``: bare-forward CPU speed, default vs oneDNN route."""
    import argparse
    import os
    import statistics

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # only effective before torch loads

    from embedseg_daisy.nn.presets import get_preset
    from embedseg_daisy.nn.rsunet import build_model

    p = argparse.ArgumentParser(prog="python -m embedseg_daisy.nn.cpu", description=_main.__doc__)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--kind", default="embedding", choices=["embedding", "affinity"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--profile", action="store_true", help="print which convolution kernels run")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    spec = get_preset(a.preset, a.kind)
    model = build_model(spec)
    vox = a.batch * int(torch.tensor(spec.input_shape).prod())
    print(f"{a.preset} {a.kind}, input {a.batch}x{spec.input_shape}, {a.threads} threads, torch {torch.__version__}")
    for fast in (False, True):
        r = benchmark_forward(model, spec.input_shape, a.batch, a.repeat, fast)
        best, med, cpu = min(r["wall"]), statistics.median(r["wall"]), statistics.median(r["cpu"])
        print(
            f"  {'oneDNN route' if fast else 'default     '}: best {best:.3f} s  median {med:.3f} s  "
            f"-> {vox / best / 1e6:.3f} Mvox/s (best), {vox / med / 1e6:.3f} Mvox/s (median); "
            f"{cpu:.3f} CPU-s per forward"
        )
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            x = torch.rand(a.batch, 1, *spec.input_shape)
            with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
                model(x)
            for ev in prof.key_averages():
                if "conv" in ev.key:
                    print(f"      {ev.key:32s} x{ev.count:3d}  {ev.self_cpu_time_total / 1e3:9.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
