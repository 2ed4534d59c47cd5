"""Model specifications (``ModelSpec``) and the two shipped presets.

A ``ModelSpec`` fully describes a network: what it predicts (``kind``), its
architecture (``widths``, ``depth``, ``residual_convs``), the patch geometry it was
trained for (``input_shape``, ``output_crop``, voxels, (z, y, x)) and, for affinity
nets, the edge offsets of its output channels.  It is stored inside every checkpoint
as a JSON string so that a checkpoint can be rebuilt without any other file.

Presets
-------
``paper``
    input (20, 128, 128), crop (16, 96, 96), widths (24, 32, 48, 72, 104) with four
    (1, 2, 2) downsamplings.  The paper's supplementary figures (S6/S7) carry the exact
    widths only as images; the text says only "different numbers of feature maps at
    each scale".  These are the Residual Symmetric U-Net widths of the authors'
    public DeepEM line, about 2.9 M parameters with 4-convolution modules.
``tiny``
    same patch geometry, widths (16, 32, 64), two downsamplings.  Every convolution
    except the 1-channel input convolution then has ``C * Z * Y = 40960 > 20480`` per
    sample, so PyTorch's CPU dispatch picks oneDNN even at batch size 1 (see
    ``embedseg_daisy.nn.cpu``).  ~0.62 M parameters, 2.5 MB as float32.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embedseg_daisy.offsets import BASELINE_LONG_RANGE, BASELINE_NEAREST

Kind = Literal["embedding", "affinity"]

#: Offsets of the 12 affinity-net output channels: 3 nearest-neighbour then 9 long-range.
BASELINE_OFFSETS: tuple[tuple[int, int, int], ...] = tuple(BASELINE_NEAREST) + tuple(
    BASELINE_LONG_RANGE
)

#: Patch geometry of both presets (paper, Fig. S7), voxels (z, y, x).
PAPER_INPUT_SHAPE = (20, 128, 128)
PAPER_OUTPUT_CROP = (16, 96, 96)


class ModelSpec(BaseModel):
    """Everything needed to rebuild a network and use it correctly.

    ``depth`` is the number of (1, 2, 2) downsamplings; ``widths`` has ``depth + 1``
    entries, one per scale, finest first.  ``residual_convs`` is the number of 3x3x3
    convolutions in the residual branch of each module (Lee et al. 2017 used 2; the
    paper "added one more", hence 3); each module also has one entry convolution
    that changes the width, so a module has ``residual_convs + 1`` convolutions.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    preset: str | None = None
    widths: tuple[int, ...]
    depth: int
    residual_convs: int = Field(3, ge=1)
    in_channels: int = Field(1, ge=1)
    embed_dim: int = Field(24, ge=1)
    embedding_scale_init: float = 0.1
    delta_d: float = Field(1.5, gt=0)
    offsets: tuple[tuple[int, int, int], ...] = ()
    input_shape: tuple[int, int, int] = PAPER_INPUT_SHAPE
    output_crop: tuple[int, int, int] = PAPER_OUTPUT_CROP
    voxel_size: tuple[int, int, int] = (29, 12, 12)
    #: Free-form provenance written by the trainer (steps, data, losses, ...).
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(w < 1 for w in v):
            raise ValueError("widths must be a non-empty list of positive integers")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if len(self.widths) != self.depth + 1:
            raise ValueError(
                f"widths has {len(self.widths)} entries but depth={self.depth} needs "
                f"{self.depth + 1} (one per scale)"
            )
        if self.kind == "affinity" and not self.offsets:
            raise ValueError("an affinity spec needs offsets (one per output channel)")
        if self.kind == "embedding" and self.offsets:
            raise ValueError("an embedding spec has no offsets")
        f = 2**self.depth
        for axis in (1, 2):
            if self.input_shape[axis] % f:
                raise ValueError(
                    f"input_shape {self.input_shape}: y and x must be multiples of "
                    f"2**depth = {f}"
                )
        for i, c in zip(self.input_shape, self.output_crop):
            if c < 1 or c > i or (i - c) % 2:
                raise ValueError(
                    f"output_crop {self.output_crop} must fit centred in input_shape "
                    f"{self.input_shape} (same parity per axis)"
                )
        return self

    @property
    def out_channels(self) -> int:
        return self.embed_dim + 1 if self.kind == "embedding" else len(self.offsets)

    @property
    def crop_margin(self) -> tuple[int, int, int]:
        """Voxels removed on each side of the output to get ``output_crop``."""
        return tuple((i - c) // 2 for i, c in zip(self.input_shape, self.output_crop))  # type: ignore[return-value]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.model_validate(json.loads(text))


_PRESET_ARCH: dict[str, dict[str, Any]] = {
    "paper": dict(widths=(24, 32, 48, 72, 104), depth=4, residual_convs=3),
    "tiny": dict(widths=(16, 32, 64), depth=2, residual_convs=3),
}

PRESETS: tuple[str, ...] = tuple(_PRESET_ARCH)


def get_preset(name: str, kind: Kind = "embedding", **overrides: Any) -> ModelSpec:
    """The ``ModelSpec`` of preset ``name`` for ``kind``, with field ``overrides``.

    ``get_preset("tiny", "affinity")`` gives the 12-channel baseline net with
    ``BASELINE_OFFSETS``.  Overriding ``widths`` without ``depth`` sets
    ``depth = len(widths) - 1``.
    """
    if name not in _PRESET_ARCH:
        raise ValueError(f"unknown model preset {name!r}; choose one of {list(PRESETS)}")
    fields: dict[str, Any] = dict(_PRESET_ARCH[name])
    fields.update(
        kind=kind,
        preset=name,
        input_shape=PAPER_INPUT_SHAPE,
        output_crop=PAPER_OUTPUT_CROP,
        offsets=BASELINE_OFFSETS if kind == "affinity" else (),
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "widths" in overrides and "depth" not in overrides:
        overrides["depth"] = len(overrides["widths"]) - 1
    fields.update(overrides)
    return ModelSpec(**fields)
