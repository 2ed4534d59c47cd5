"""Residual Symmetric U-Net (Lee et al. 2017, as modified in Lee et al. 2019, Sec. 3).

Architecture (``spec.depth`` downsamplings, ``spec.widths`` per scale, finest first):

* **residual module** ``(c_in -> c)``: entry 3x3x3 convolution ``c_in -> c`` followed by
  IN + ReLU; its output is the skip; then a residual branch of ``spec.residual_convs``
  3x3x3 convolutions ``c -> c`` (IN + ReLU between them); the branch output is added
  to the skip, then IN + ReLU.  Lee et al. (2017) had two convolutions in the branch;
  the 2019 paper adds one more (default 3), so a module has 4 convolutions.
* **encoder**: a module per scale; between scales a (1, 2, 2) max-pool.
* **decoder**: per scale, trilinear resize by (1, 2, 2) (bilinear in-plane, the
  paper's "bilinear resize convolution") followed by a 1x1x1 convolution to the finer
  width, skip connection by addition, IN + ReLU, then a residual module.
* **head**: a 3x3x3 convolution to ``spec.out_channels``.  Embedding nets return the
  first ``embed_dim`` channels times a learnable scalar (initialised at
  ``spec.embedding_scale_init`` = 0.1) and one background-mask logit (log-odds of
  *background*); affinity nets return one logit per offset in ``spec.offsets``.

All convolutions are 'same'-padded, so the output has the input's spatial size;
callers crop it to ``spec.output_crop`` (``crop_center``).  InstanceNorm is affine
and uses patch statistics in training and inference alike.

Convolutions are ``Conv3d`` modules that can be routed to oneDNN on CPU (see
``embedseg_daisy.nn.cpu.fast_inference``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from embedseg_daisy.nn.cpu import onednn_conv3d
from embedseg_daisy.nn.presets import ModelSpec


class EmbeddingOutput(NamedTuple):
    """Output of an embedding net: both ``(N, C, Z, Y, X)``, input-sized."""

    embedding: torch.Tensor  # (N, embed_dim, Z, Y, X), already scaled
    mask_logit: torch.Tensor  # (N, 1, Z, Y, X), logit of P(background)


class AffinityOutput(NamedTuple):
    """Output of an affinity (baseline) net."""

    logits: torch.Tensor  # (N, len(offsets), Z, Y, X), logits of the affinities


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` with integer 'same' padding and an optional oneDNN route.

    With ``onednn = True`` a float32 CPU input is convolved by
    ``torch.ops.aten.mkldnn_convolution`` directly, skipping PyTorch's dispatch
    heuristic that sends small ``N*C*D*H`` problems to the slow im2col kernel
    (``slow_conv3d``); under autograd ``OneDNNConv3dFunction`` keeps the backward
    on oneDNN too (see ``embedseg_daisy.nn.cpu``).
    """

    onednn: bool = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under CPU autocast the route would bypass the bfloat16 cast; PyTorch's own
        # dispatch then picks oneDNN for bfloat16 anyway.
        if (
            self.onednn
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
        ):
            return onednn_conv3d(x, self.weight, self.bias, self.padding)
        return super().forward(x)


def _norm(c: int) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(c, affine=True, track_running_stats=False)


class ResidualModule(nn.Module):
    def __init__(self, in_channels: int, channels: int, residual_convs: int):
        super().__init__()
        self.entry = Conv3d(in_channels, channels, 3, bias=False)
        self.entry_norm = _norm(channels)
        self.convs = nn.ModuleList(
            Conv3d(channels, channels, 3, bias=False) for _ in range(residual_convs)
        )
        self.norms = nn.ModuleList(_norm(channels) for _ in range(residual_convs - 1))
        self.out_norm = _norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.entry_norm(self.entry(x)), inplace=True)
        skip = x
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < last:
                x = F.relu(self.norms[i](x), inplace=True)
        return F.relu(self.out_norm(x + skip), inplace=True)


class UpModule(nn.Module):
    """Resize convolution (trilinear x(1,2,2) + 1x1x1 conv), add skip, IN-ReLU, module."""

    def __init__(self, in_channels: int, channels: int, residual_convs: int):
        super().__init__()
        self.project = Conv3d(in_channels, channels, 1, bias=False)
        self.norm = _norm(channels)
        self.module = ResidualModule(channels, channels, residual_convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="trilinear", align_corners=False)
        x = F.relu(self.norm(self.project(x) + skip), inplace=True)
        return self.module(x)


class RSUNet(nn.Module):
    """Residual Symmetric U-Net built from a ``ModelSpec`` (``build_model(spec)``)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        w = spec.widths
        self.down = nn.ModuleList()
        c_in = spec.in_channels
        for width in w:
            self.down.append(ResidualModule(c_in, width, spec.residual_convs))
            c_in = width
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.up = nn.ModuleList(
            UpModule(w[i + 1], w[i], spec.residual_convs) for i in reversed(range(spec.depth))
        )
        self.head = Conv3d(w[0], spec.out_channels, 3, bias=True)
        if spec.kind == "embedding":
            self.embedding_scale = nn.Parameter(torch.tensor(float(spec.embedding_scale_init)))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # A smaller head keeps the initial logits / embeddings near zero.
        nn.init.normal_(self.head.weight, std=(1.0 / (27 * self.spec.widths[0])) ** 0.5)

    @property
    def kind(self) -> str:
        return self.spec.kind

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.spec.in_channels:
            raise ValueError(
                f"expected input (N, {self.spec.in_channels}, Z, Y, X), got {tuple(x.shape)}"
            )
        f = 2**self.spec.depth
        if x.shape[3] % f or x.shape[4] % f:
            raise ValueError(
                f"input y, x {tuple(x.shape[3:])} must be multiples of 2**depth = {f}"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder path: the coarsest module's output and the skips, finest first."""
        skips = []
        for i, module in enumerate(self.down):
            x = module(x)
            if i < self.spec.depth:
                skips.append(x)
                x = self.pool(x)
        return x, skips

    def forward(self, x: torch.Tensor) -> EmbeddingOutput | AffinityOutput:
        self._check_input(x)
        x, skips = self.encode(x)
        for up in self.up:
            x = up(x, skips.pop())
        y = self.head(x)
        if self.spec.kind == "embedding":
            d = self.spec.embed_dim
            return EmbeddingOutput(y[:, :d] * self.embedding_scale, y[:, d : d + 1])
        return AffinityOutput(y)


def build_model(spec: ModelSpec) -> RSUNet:
    """A freshly initialised network for ``spec`` (float32, CPU, train mode)."""
    return RSUNet(spec)


def crop_center(t: torch.Tensor, crop: tuple[int, int, int]) -> torch.Tensor:
    """Centre crop of the last three axes of ``t`` to ``crop`` (voxels, z, y, x)."""
    shape = t.shape[-3:]
    sl = []
    for s, c in zip(shape, crop):
        if c > s or (s - c) % 2:
            raise ValueError(f"cannot centre-crop {tuple(shape)} to {tuple(crop)}")
        m = (s - c) // 2
        sl.append(slice(m, m + c))
    return t[(..., *sl)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
