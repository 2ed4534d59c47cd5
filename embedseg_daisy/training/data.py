"""Training data: volumes from zarr, random patches, targets for the loss.

Patch pipeline (per training example):

1. pick a volume (probability proportional to its number of patch positions) and a
   uniformly random input-patch position inside it;
2. read the input window plus ``AugmentConfig.margin()`` voxels on each side in y and
   x (edge-replicated where it leaves the volume), raw scaled to [0, 1];
3. augment (:func:`embedseg_daisy.training.augment.augment`), then crop the margin:
   the network input is exactly ``spec.input_shape``;
4. labels of the *whole input patch* go through the Fig. S4 background kernel, then
   are cropped to ``spec.output_crop`` (the centre, where the loss applies -- the same
   crop inference keeps), compacted to int64 ids, and split into local parts
   (connected components inside the crop).

The network always sees the full input patch; the loss is evaluated on the output
crop only.  Validation uses fixed positions (seeded) without augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from embedseg_daisy.errors import InputError
from embedseg_daisy.training.augment import AugmentConfig, Patch, augment
from embedseg_daisy.training.loss import augment_background, compact_ids, local_parts


@dataclass
class TrainingVolume:
    """A volume held in memory: ``raw`` float32 in [0, 1], ``labels`` ids, ``myelin`` bool."""

    name: str
    raw: np.ndarray
    labels: np.ndarray
    myelin: np.ndarray | None = None
    voxel_size: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.raw.ndim != 3:
            raise InputError(f"{self.name}: raw must be 3-D (z, y, x), got shape {self.raw.shape}")
        if self.labels.shape != self.raw.shape:
            raise InputError(
                f"{self.name}: labels shape {self.labels.shape} differs from raw shape {self.raw.shape}"
            )
        if self.myelin is not None and self.myelin.shape != self.raw.shape:
            raise InputError(f"{self.name}: myelin shape {self.myelin.shape} differs from raw {self.raw.shape}")


class Batch(NamedTuple):
    raw: torch.Tensor  # (B, 1, Z, Y, X) float32, the input patch
    labels: torch.Tensor  # (B, z, y, x) int64, output crop, after the background kernel
    parts: torch.Tensor  # (B, z, y, x) int64 local parts of labels (== labels if not split)
    myelin: torch.Tensor | None  # (B, z, y, x) bool or None

    def to(self, device) -> "Batch":
        return Batch(
            self.raw.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.parts.to(device, non_blocking=True),
            None if self.myelin is None else self.myelin.to(device, non_blocking=True),
        )


def _as_unit_float(raw: np.ndarray, name: str) -> np.ndarray:
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / np.float32(255.0)
    if raw.dtype.kind == "f":
        return raw.astype(np.float32, copy=False)
    raise InputError(f"{name}: raw dtype {raw.dtype} is not supported (uint8 or float in [0, 1])")


def _read_zarr(path: Path, ds_name: str):
    """``(funlib Array, numpy data)`` of a (z, y, x) dataset in a zarr container."""
    from funlib.persistence import open_ds

    try:
        arr = open_ds(str(path / ds_name))
    except Exception as e:
        raise InputError(f"{path}/{ds_name}: cannot open dataset ({type(e).__name__}: {e})") from None
    if arr.channel_dims:
        raise InputError(f"{path}/{ds_name}: expected a (z, y, x) dataset, got channels")
    return arr, np.asarray(arr[arr.roi])


def read_raw(path: str | Path, raw: str = "raw") -> np.ndarray:
    """Only the raw of a training volume (zarr container or ``.npz``), float32 in [0, 1]
    as training reads it -- for work that needs no labels (e.g. ``nn.grow``'s calibration)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such volume")
    if path.suffix == ".npz":
        with np.load(path) as data:
            if raw not in data:
                raise InputError(f"{path}: no array named {raw!r} (has {sorted(data.files)})")
            a = data[raw]
    else:
        a = _read_zarr(path, raw)[1]
    if a.ndim != 3:
        raise InputError(f"{path}/{raw}: raw must be 3-D (z, y, x), got shape {a.shape}")
    return _as_unit_float(a, f"{path}/{raw}")


def open_volume(
    path: str | Path, raw: str = "raw", labels: str = "labels", myelin: str | None = None
) -> TrainingVolume:
    """Read a training volume from a zarr container through funlib.persistence, or from
    an ``.npz`` file holding arrays named ``raw`` and ``labels`` (e.g. volumes generated
    on a machine without zarr)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            missing = [k for k in (raw, labels) if k not in data]
            if missing:
                raise InputError(f"{path}: no array named {missing[0]!r} (has {sorted(data.files)})")
            lab = data[labels]
            if lab.dtype.kind not in "ui":
                raise InputError(f"{path}/{labels}: labels must be integers, got {lab.dtype}")
            return TrainingVolume(
                name=str(path), raw=_as_unit_float(data[raw], f"{path}/{raw}"), labels=lab, voxel_size=(29, 12, 12)
            )
    raw_arr, raw_np = _read_zarr(path, raw)
    lab_arr, lab_np = _read_zarr(path, labels)
    name = str(path)
    if lab_arr.roi != raw_arr.roi or lab_arr.voxel_size != raw_arr.voxel_size:
        raise InputError(
            f"{path}: {labels} (roi {lab_arr.roi}, voxel size {lab_arr.voxel_size}) must cover the "
            f"same region as {raw} (roi {raw_arr.roi}, voxel size {raw_arr.voxel_size})"
        )
    if lab_np.dtype.kind not in "ui":
        raise InputError(f"{path}/{labels}: labels must be integers, got {lab_np.dtype}")
    my_np = None
    if myelin is not None:
        my_arr, my_np = _read_zarr(path, myelin)
        if my_arr.roi != raw_arr.roi:
            raise InputError(f"{path}/{myelin}: must cover the same region as {raw}")
        my_np = my_np.astype(bool)
    return TrainingVolume(
        name=name,
        raw=_as_unit_float(raw_np, f"{path}/{raw}"),
        labels=lab_np,
        myelin=my_np,
        voxel_size=tuple(int(v) for v in raw_arr.voxel_size),
    )


def _read_window(a: np.ndarray, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """``a[start : start + shape]``, edge-replicated where the window leaves ``a``."""
    src, pad = [], []
    for s0, n, size in zip(start, shape, a.shape):
        lo, hi = max(s0, 0), min(s0 + n, size)
        src.append(slice(lo, hi))
        pad.append((lo - s0, s0 + n - hi))
    out = a[tuple(src)]
    if any(p != (0, 0) for p in pad):
        out = np.pad(out, pad, mode="edge")
    return np.ascontiguousarray(out)


def _crop(a: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    sl = tuple(slice((s - c) // 2, (s - c) // 2 + c) for s, c in zip(a.shape, crop))
    return a[sl]


class PatchSampler:
    """Random training patches (and fixed validation batches) from in-memory volumes."""

    def __init__(
        self,
        volumes: Sequence[TrainingVolume],
        input_shape: Sequence[int],
        output_crop: Sequence[int],
        augment_cfg: AugmentConfig | None = None,
        *,
        background_kernel: bool = True,
        split_parts: bool = True,
    ):
        if not volumes:
            raise InputError("no training volumes")
        self.volumes = list(volumes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.output_crop = tuple(int(v) for v in output_crop)
        self.augment_cfg = augment_cfg or AugmentConfig(enabled=False)
        self.background_kernel = background_kernel
        self.split_parts = split_parts
        self.margin = self.augment_cfg.margin()
        for v in self.volumes:
            if any(s < i for s, i in zip(v.raw.shape, self.input_shape)):
                raise InputError(
                    f"{v.name}: volume shape {v.raw.shape} is smaller than the input patch {self.input_shape}"
                )
        positions = np.array(
            [np.prod([s - i + 1 for s, i in zip(v.raw.shape, self.input_shape)]) for v in self.volumes],
            dtype=np.float64,
        )
        self._weights = positions / positions.sum()

    # -- patches
    def sample_patch(self, rng: np.random.Generator, *, augmented: bool = True) -> Patch:
        """An input-sized patch (raw, full-patch labels, myelin) after augmentation."""
        v = self.volumes[int(rng.choice(len(self.volumes), p=self._weights))]
        start = [int(rng.integers(0, s - i + 1)) for s, i in zip(v.raw.shape, self.input_shape)]
        m = self.margin if augmented else 0
        wstart = (start[0], start[1] - m, start[2] - m)
        wshape = (self.input_shape[0], self.input_shape[1] + 2 * m, self.input_shape[2] + 2 * m)
        patch = Patch(
            raw=_read_window(v.raw, wstart, wshape),
            labels=_read_window(v.labels, wstart, wshape),
            myelin=None if v.myelin is None else _read_window(v.myelin, wstart, wshape),
        )
        if augmented:
            patch = augment(patch, rng, self.augment_cfg)
        if m:
            core = (slice(None), slice(m, m + self.input_shape[1]), slice(m, m + self.input_shape[2]))
            patch = Patch(
                raw=np.ascontiguousarray(patch.raw[core]),
                labels=np.ascontiguousarray(patch.labels[core]),
                myelin=None if patch.myelin is None else np.ascontiguousarray(patch.myelin[core]),
            )
        return patch

    def targets(self, patch: Patch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(labels, parts, myelin)`` of the output crop of an input-sized patch."""
        labels = patch.labels
        if self.background_kernel:
            labels = augment_background(labels)
        labels = compact_ids(_crop(labels, self.output_crop))
        parts = local_parts(labels) if self.split_parts else labels
        myelin = None if patch.myelin is None else np.ascontiguousarray(_crop(patch.myelin, self.output_crop))
        return labels, parts, myelin

    def batch(self, rng: np.random.Generator, batch_size: int, *, augmented: bool = True) -> Batch:
        raws, labs, parts, myelins = [], [], [], []
        for _ in range(batch_size):
            p = self.sample_patch(rng, augmented=augmented)
            lab, par, my = self.targets(p)
            raws.append(p.raw)
            labs.append(lab)
            parts.append(par)
            myelins.append(my)
        has_myelin = all(m is not None for m in myelins)
        return Batch(
            raw=torch.from_numpy(np.stack(raws)[:, None].astype(np.float32, copy=False)),
            labels=torch.from_numpy(np.stack(labs)),
            parts=torch.from_numpy(np.stack(parts)),
            myelin=torch.from_numpy(np.stack(myelins)) if has_myelin else None,
        )

    def fixed_batches(self, n_patches: int, batch_size: int, seed: int) -> list[Batch]:
        """Deterministic, unaugmented batches (validation)."""
        rng = np.random.default_rng(seed)
        out = []
        left = n_patches
        while left > 0:
            b = min(batch_size, left)
            out.append(self.batch(rng, b, augmented=False))
            left -= b
        return out
