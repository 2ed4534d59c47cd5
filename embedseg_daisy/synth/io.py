"""Write and read synthetic volumes as zarr datasets via funlib.persistence.

``raw`` (uint8) and ``labels`` (uint64) share voxel size (nm, z, y, x), offset
(nm), axis names ``z, y, x`` and units ``nm``.  The generator's metadata goes
into both datasets' attributes; ``labels`` also carries ``self_touches``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import zarr
from funlib.geometry import Coordinate
from funlib.persistence import open_ds, prepare_ds

from .volume import SynthVolume

RAW = "raw"
LABELS = "labels"
#: attribute keys written by funlib.persistence itself (not generator metadata)
_ARRAY_KEYS = {"axis_names", "units", "voxel_size", "offset", "types"}


def _jsonable(obj):
    """Plain JSON types (zarr attributes must serialise)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else o.tolist()))


def default_chunk_shape(shape) -> tuple[int, int, int]:
    Z, Y, X = shape
    return (min(Z, 32), min(Y, 256), min(X, 256))


def write_volume(
    path,
    volume: SynthVolume,
    voxel_size=(29, 12, 12),
    offset=(0, 0, 0),
    *,
    chunk_shape=None,
    overwrite: bool = True,
) -> None:
    """Write ``volume`` to the zarr container ``path`` as ``raw`` and ``labels``.

    ``voxel_size`` and ``offset`` are in nm (z, y, x); the offset must be a
    multiple of the voxel size.
    """
    voxel_size = Coordinate(*(int(v) for v in voxel_size))
    offset = Coordinate(*(int(v) for v in offset))
    if any(o % v for o, v in zip(offset, voxel_size)):
        raise ValueError(f"offset {tuple(offset)} nm is not a multiple of the voxel size {tuple(voxel_size)} nm")
    if volume.raw.shape != volume.labels.shape:
        raise ValueError(f"raw {volume.raw.shape} and labels {volume.labels.shape} differ in shape")
    chunks = tuple(chunk_shape) if chunk_shape is not None else default_chunk_shape(volume.raw.shape)
    # funlib.persistence writes voxel_size / offset / axis names itself
    meta = {k: v for k, v in _jsonable(dict(volume.meta)).items() if k not in _ARRAY_KEYS}
    meta["voxel_size_nm"] = list(voxel_size)
    meta["offset_nm"] = list(offset)
    mode = "w" if overwrite else "w-"
    path = os.fspath(path)
    for name, data, dtype, extra in (
        (RAW, volume.raw, np.uint8, {}),
        (LABELS, volume.labels, np.uint64, {"self_touches": _jsonable(volume.self_touches)}),
    ):
        ds = prepare_ds(
            os.path.join(path, name),
            shape=data.shape,
            offset=offset,
            voxel_size=voxel_size,
            axis_names=["z", "y", "x"],
            units=["nm", "nm", "nm"],
            chunk_shape=chunks,
            dtype=dtype,
            mode=mode,
            custom_metadata={**meta, **extra},
        )
        ds[ds.roi] = np.asarray(data, dtype=dtype)


def read_volume(path) -> SynthVolume:
    """Read a volume written by :func:`write_volume`.

    ``meta`` holds the generator metadata plus ``voxel_size_nm`` and
    ``offset_nm`` as stored by funlib.persistence.
    """
    path = os.fspath(path)
    raw_ds = open_ds(os.path.join(path, RAW))
    lab_ds = open_ds(os.path.join(path, LABELS))
    raw = np.asarray(raw_ds[raw_ds.roi])
    labels = np.asarray(lab_ds[lab_ds.roi])
    attrs = dict(zarr.open_array(os.path.join(path, LABELS), mode="r").attrs)
    touches = list(attrs.pop("self_touches", []))
    meta = {k: v for k, v in attrs.items() if k not in _ARRAY_KEYS}
    meta["voxel_size_nm"] = [int(v) for v in lab_ds.voxel_size]
    meta["offset_nm"] = [int(v) for v in lab_ds.offset]
    meta["voxel_size"] = list(meta["voxel_size_nm"])
    return SynthVolume(raw=raw, labels=labels, self_touches=touches, meta=meta)
