"""Checkpoints: weights + ``ModelSpec`` (+ optimizer / step / extra for resuming).

File format (a ``torch.save`` dict, loadable with ``torch.load(weights_only=True)``)::

    {"format": "embedseg-daisy-checkpoint", "version": 1,
     "spec": <ModelSpec as a JSON string>,
     "weights_dtype": "float32" | "float16",
     "state_dict": {name: tensor},
     "step": int, "optimizer": <optimizer state_dict> | None, "extra": dict}

Weights may be stored as float16 (``half=True``) to keep files small; they are always
loaded as float32.  Every failure to load raises ``CheckpointError`` with a one-line
message that names the path and the problem.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from embedseg_daisy.errors import CheckpointError
from embedseg_daisy.nn.presets import ModelSpec
from embedseg_daisy.nn.rsunet import RSUNet, build_model

FORMAT = "embedseg-daisy-checkpoint"
VERSION = 1


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    spec: ModelSpec | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` (and optionally ``optimizer``) to ``path`` atomically.

    ``spec`` defaults to ``model.spec``.  ``extra`` may hold plain Python values,
    tensors and nested dicts/lists of them (anything ``weights_only`` loading accepts).
    ``half=True`` stores floating-point weights as float16.
    """
    spec = spec if spec is not None else getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError("save_checkpoint needs a ModelSpec (argument or model.spec)")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v.clone()
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_json(),
        "weights_dtype": "float16" if half else "float32",
        "state_dict": state,
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The validated payload: ``spec`` as a ``ModelSpec``, float32 ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, foreign pickle ...
        raise CheckpointError(
            f"checkpoint {path}: not a readable checkpoint ({type(e).__name__}: {_one_line(e, 120)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an embedseg-daisy checkpoint (no format tag)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path}: unsupported checkpoint version {payload.get('version')!r} "
            f"(this code reads version {VERSION})"
        )
    try:
        spec = ModelSpec.from_json(payload["spec"])
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: invalid model spec ({_one_line(e, 160)})") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: no state_dict")
    payload["spec"] = spec
    payload["state_dict"] = {
        k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()
    }
    return payload


def _check_weights(path: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[0]}")
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    if problems:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match its model spec: " + "; ".join(problems)
        )


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    expected_kind: str | None = None,
    expected_offsets: Sequence[Sequence[int]] | None = None,
) -> tuple[RSUNet, ModelSpec]:
    """Rebuild the network of a checkpoint.  Returns ``(model in eval mode, spec)``.

    Raises ``CheckpointError`` when the file is missing or unreadable, is not an
    embedseg-daisy checkpoint, holds another kind of net than ``expected_kind``
    ('embedding' | 'affinity'), has other offsets than ``expected_offsets``, or its
    weights do not fit its spec.
    """
    path = Path(path)
    payload = read_checkpoint(path, "cpu")
    spec: ModelSpec = payload["spec"]
    if expected_kind is not None and spec.kind != expected_kind:
        raise CheckpointError(
            f"checkpoint {path}: holds an {spec.kind!r} net, expected an {expected_kind!r} net"
        )
    if expected_offsets is not None:
        want = tuple(tuple(int(v) for v in o) for o in expected_offsets)
        if tuple(spec.offsets) != want:
            raise CheckpointError(
                f"checkpoint {path}: affinity offsets {list(spec.offsets)} differ from the "
                f"expected {list(want)}"
            )
    model = build_model(spec)
    _check_weights(path, model, payload["state_dict"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), spec
