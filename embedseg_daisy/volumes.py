"""Zarr datasets through funlib.persistence, in voxel units.

funlib arrays speak world units (nm); everything past this module speaks voxels.
:class:`Volume` wraps an array with voxel-unit reads and writes.  Input problems
(missing container or dataset, wrong dtype, voxel size mismatch, empty volume) raise
:class:`~embedseg_daisy.errors.InputError` with the path, dataset and expected vs.
found values, before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds, prepare_ds

from .errors import InputError, RunConflictError

RUN_ATTR = "embedseg_daisy"

# zarr skips writing chunks equal to the fill value by default; a missing chunk must
# mean "lost", never "all background", for `verify` to detect crashes.
zarr.config.set({"array.write_empty_chunks": True})


@dataclass
class Volume:
    """A zarr array addressed in voxels, (z, y, x) spatial, optional leading channels."""

    array: Array
    path: str

    @property
    def voxel_size(self) -> Coordinate:
        return Coordinate(self.array.voxel_size)

    @property
    def roi(self) -> Roi:
        """Spatial ROI in voxels."""
        return self.array.roi / self.voxel_size

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def channels(self) -> int | None:
        return self.array.shape[0] if len(self.array.shape) == 4 else None

    @property
    def attrs(self) -> Any:
        return self.array.attrs

    def read(self, roi: Roi, fill_value: int | float = 0) -> np.ndarray:
        """Read a voxel ROI; parts outside the array are ``fill_value``."""
        return self.array.to_ndarray(roi * self.voxel_size, fill_value=fill_value)

    def write(self, roi: Roi, data: np.ndarray) -> None:
        """Write a voxel ROI (must lie inside the array).  zarr writes each chunk
        atomically, so a repeated write of the same block is harmless."""
        self.array[roi * self.voxel_size] = data


def _container_exists(container: str) -> bool:
    return Path(container).exists()


def open_volume(container: str, dataset: str, *, mode: str = "r") -> Volume:
    if not _container_exists(container):
        raise InputError(f"zarr container not found: {container}")
    path = f"{container.rstrip('/')}/{dataset}"
    if not Path(path).exists():
        raise InputError(f"dataset '{dataset}' not found in {container}")
    try:
        array = open_ds(path, mode=mode)
    except Exception as err:  # funlib raises assorted errors for broken metadata
        raise InputError(f"cannot open dataset '{dataset}' in {container}: {err}") from None
    return Volume(array, path)


def check_input(
    volume: Volume,
    *,
    name: str,
    dtypes: tuple[str, ...],
    voxel_size: tuple[int, int, int],
    channels: int | None = None,
) -> None:
    """Validate an input dataset against what the config expects."""
    where = f"{name} dataset {volume.path}"
    if volume.dtype.name not in dtypes:
        raise InputError(f"{where}: expected dtype {' or '.join(dtypes)}, found {volume.dtype.name}")
    if tuple(volume.voxel_size) != tuple(voxel_size):
        raise InputError(
            f"{where}: voxel size mismatch: config says {tuple(voxel_size)} nm (z, y, x), "
            f"dataset has {tuple(volume.voxel_size)} nm"
        )
    spatial = volume.array.shape[-3:]
    if len(volume.array.shape) - (1 if channels else 0) != 3:
        raise InputError(f"{where}: expected a 3-D (z, y, x) dataset, found shape {tuple(volume.array.shape)}")
    if channels is not None and volume.channels != channels:
        raise InputError(f"{where}: expected {channels} channels, found {volume.channels}")
    if any(s == 0 for s in spatial):
        raise InputError(f"{where}: the volume is empty (shape {tuple(volume.array.shape)})")


def check_finite(volume: Volume, roi: Roi, *, name: str, slab_voxels: int = 1 << 25) -> None:
    """Raise :class:`InputError` if a floating-point dataset holds NaN or inf inside
    ``roi`` (voxels).  Reads ``roi`` once, in z-slabs of about ``slab_voxels`` voxels
    (bounded memory); integer datasets are skipped."""
    if volume.dtype.kind != "f":
        return
    begin, shape = Coordinate(roi.begin), Coordinate(roi.shape)
    plane = max(1, int(shape[1]) * int(shape[2]))
    step = max(1, slab_voxels // plane)
    for z in range(0, int(shape[0]), step):
        slab = Roi(begin + Coordinate(z, 0, 0), Coordinate(min(step, int(shape[0]) - z), shape[1], shape[2]))
        data = volume.read(slab)
        bad = ~np.isfinite(data)
        if bad.any():
            first = tuple(int(v) for v in np.argwhere(bad)[0][-3:] + np.asarray(slab.begin))
            raise InputError(
                f"{name} dataset {volume.path}: {int(bad.sum())} NaN or inf value(s) in ROI {slab} "
                f"(voxels), the first at {first} (z, y, x)"
            )


def prepare_volume(
    container: str,
    dataset: str,
    *,
    roi: Roi,
    voxel_size: tuple[int, int, int],
    dtype: Any,
    chunk_shape: tuple[int, int, int],
    channels: int | None = None,
    attrs: dict[str, Any] | None = None,
) -> Volume:
    """Create (or reopen, if compatible) an output dataset covering ``roi`` (voxels)."""
    path = f"{container.rstrip('/')}/{dataset}"
    shape = tuple(roi.shape) if channels is None else (channels, *roi.shape)
    chunks = tuple(chunk_shape) if channels is None else (channels, *chunk_shape)
    axis_names = ["z", "y", "x"] if channels is None else ["c^", "z", "y", "x"]
    if Path(path).exists():
        vol = open_volume(container, dataset, mode="r+")
        if (
            tuple(vol.array.shape) != shape
            or vol.dtype != np.dtype(dtype)
            or vol.roi != roi
            or tuple(vol.voxel_size) != tuple(voxel_size)
        ):
            raise RunConflictError(
                f"output dataset {path} exists with shape {tuple(vol.array.shape)}, dtype {vol.dtype}, "
                f"ROI {vol.roi} (voxels); this run needs shape {shape}, dtype {np.dtype(dtype)}, ROI {roi}"
            )
        return vol
    array = prepare_ds(
        path,
        shape=shape,
        offset=Coordinate(roi.offset) * Coordinate(voxel_size),
        voxel_size=Coordinate(voxel_size),
        axis_names=axis_names,
        units=["nm", "nm", "nm"],
        chunk_shape=chunks,
        dtype=dtype,
        mode="a",
        custom_metadata=attrs or {},
    )
    return Volume(array, path)


def claim_output(container: str, run_name: str, results_hash: str, *, force: bool = False) -> None:
    """Mark the output container as belonging to this run, or refuse if it holds another.

    The marker is a small JSON file in the container (zarr 3 ignores unknown files)."""
    root = Path(container)
    marker = root / f"{RUN_ATTR}.json"
    if marker.exists():
        held = json.loads(marker.read_text())
        if held.get("run") != run_name or (held.get("results_hash") != results_hash and not force):
            # --force only lets the same run continue with changed parameters
            remedy = "Use a different output path" + (
                ", or --force to continue with changed parameters." if held.get("run") == run_name else "."
            )
            raise RunConflictError(
                f"output container {container} already holds run '{held.get('run')}' "
                f"(results hash {held.get('results_hash')}); this run is '{run_name}' "
                f"(results hash {results_hash}). {remedy}"
            )
    elif root.exists() and any(p.name != "zarr.json" for p in root.iterdir()):
        raise RunConflictError(
            f"output container {container} exists and holds data from something other than an "
            "embedseg-daisy run; refusing to write into it"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run": run_name, "results_hash": results_hash}))
    tmp.replace(marker)


def chunk_paths(volume: Volume, roi: Roi) -> list[Path]:
    """Files of the zarr chunks covering a voxel ROI (default v3 chunk key encoding)."""
    import itertools

    meta = json.loads((Path(volume.path) / "zarr.json").read_text())
    chunk_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
    spatial = chunk_shape[-3:]
    begin = Coordinate(roi.begin) - Coordinate(volume.roi.begin)
    end = Coordinate(roi.end) - Coordinate(volume.roi.begin)
    ranges = [range(b // c, -(-e // c)) for b, e, c in zip(begin, end, spatial)]
    lead = [[0]] * (len(chunk_shape) - 3)
    paths = []
    for idx in itertools.product(*lead, *ranges):
        paths.append(Path(volume.path) / ("c" + sep + sep.join(str(i) for i in idx)))
    return paths
