"""``TrainConfig``: the JSON file given to ``python -m embedseg_daisy.train``.

Unknown fields are rejected; validation errors become ``ConfigError`` with one line
per problem naming the field (``loss.delta_d: Input should be greater than 0``).
Relative paths are resolved against the current working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from embedseg_daisy.errors import ConfigError
from embedseg_daisy.nn.presets import ModelSpec, get_preset
from embedseg_daisy.training.augment import AugmentConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VolumeSource(_Strict):
    """A zarr container with raw (uint8 or float in [0, 1]) and labels (ids, 0 = bg)."""

    path: Path
    raw: str = "raw"
    labels: str = "labels"
    #: Optional boolean/0-1 dataset: myelin (foreground for embeddings, background for the mask).
    myelin: str | None = None


class ModelConfig(_Strict):
    """A preset plus optional overrides of its ``ModelSpec`` fields."""

    preset: Literal["tiny", "paper"] = "tiny"
    widths: tuple[int, ...] | None = None
    depth: int | None = None
    residual_convs: int | None = Field(None, ge=1)
    embed_dim: int | None = Field(None, ge=1)
    input_shape: tuple[int, int, int] | None = None
    output_crop: tuple[int, int, int] | None = None


class LossConfig(_Strict):
    delta_d: float = Field(1.5, gt=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(0.001, ge=0)
    background_weight: float = Field(1.0, ge=0)
    #: Recompute connected components per patch; drop external terms between parts.
    split_parts: bool = True
    #: Apply the 3x3x1 background-augmenting kernel (Fig. S4) to the labels.
    background_kernel: bool = True
    #: Affinity nets: weight of the long-range (auxiliary) BCE.
    long_range_weight: float = Field(1.0, ge=0)


class OptimizerConfig(_Strict):
    """AMSGrad Adam (paper: lr 1e-3, betas (0.9, 0.999), eps 1e-8)."""

    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    amsgrad: bool = True
    weight_decay: float = Field(0.0, ge=0)


class TrainConfig(_Strict):
    kind: Literal["embedding", "affinity"]
    model: ModelConfig = ModelConfig()
    train: list[VolumeSource] = Field(min_length=1)
    validation: list[VolumeSource] = Field(default_factory=list)
    augment: AugmentConfig = AugmentConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    out_dir: Path
    batch_size: int = Field(1, ge=1)
    #: Gradient accumulation: each optimiser step averages the gradients of this many
    #: batches of ``batch_size`` (effective batch ``batch_size * accumulate``), the same
    #: update as one batch of that size (instance norm is per sample).  For CPUs, where
    #: batch 2 is the cheapest per sample and larger batches get slower (BENCHMARKS.md),
    #: and for GPUs short of memory.  ``steps`` counts optimiser steps.
    accumulate: int = Field(1, ge=1)
    steps: int = Field(ge=1)
    log_every: int = Field(10, ge=1)
    #: Validate every N steps (0: never; also never without ``validation`` volumes) on
    #: ``val_patches`` fixed patches without augmentation.
    val_every: int = Field(100, ge=0)
    val_patches: int = Field(8, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: torch.set_num_threads; None: the CPUs this process may run on.
    num_threads: int | None = Field(None, ge=1)
    #: CUDA only: autocast with ``amp_dtype`` (+ GradScaler for float16).
    amp: bool = True
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    #: CPU only: route convolutions to oneDNN (see embedseg_daisy.nn.cpu).
    cpu_onednn: bool = True
    #: CPU only: autocast to bfloat16 (always bfloat16 on CPU, whatever ``amp_dtype``)
    #: when the CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere it stays
    #: float32 with a warning, since emulated bfloat16 is slower.  Convolutions then take
    #: PyTorch's own oneDNN path.  Measured here (AVX512-BF16, 2 cores, 4-level tiny,
    #: batch 2): about 2.3x faster than float32 (benchmarks/train_step.py).
    cpu_amp: bool = False
    #: Store the exported model.pt / best.pt weights as float16.
    half_weights: bool = False
    #: At the end of the run, copy the weights to ship here: best.pt when validation
    #: ran, else model.pt (e.g. "checkpoints/embedding_tiny.pt").
    export: Path | None = None
    progress: bool = True
    #: Start a new run from these weights (fine-tuning; the optimiser starts fresh).
    #: The checkpoint's model must be the config's model.  Ignored on ``--resume``.
    init_checkpoint: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        try:
            self.model_spec()
        except ValueError as e:  # pydantic's ValidationError is a ValueError too
            if isinstance(e, ValidationError):
                detail = _format_errors(e)
            else:
                detail = " ".join(str(e).split())
            raise ValueError(f"model: invalid model spec ({detail})") from None
        return self

    def model_spec(self) -> ModelSpec:
        m = self.model
        overrides: dict[str, Any] = {
            k: v for k, v in m.model_dump(exclude={"preset"}).items() if v is not None
        }
        return get_preset(m.preset, self.kind, **overrides)


def _format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def parse_train_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format_errors(e)}") from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config JSON file (``ConfigError`` on any problem)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a JSON object")
    return parse_train_config(data, str(path))
