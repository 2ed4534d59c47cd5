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

Measured on this machine (2 cores, Intel Xeon, torch 2.13 CPU), ``tiny`` embedding net,
(20, 128, 128) input, batch 1: see ``docs`` in the final report / ``fast_inference``.
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
    forward on (1, 1, 20, 128, 128)): see the module docstring / report.
    """
    model.eval()
    return use_onednn(model, enable)
