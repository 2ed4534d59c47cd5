"""What a pipeline stage is: a block grid, a per-worker setup and a per-block body.

The driver asks each stage for its grid (daisy task ROIs) and lets it create its
output datasets; a worker process builds the same stage from the config, calls
``setup`` once (load the model, open arrays) and ``process`` per block.  ``process``
writes the block's outputs idempotently; the worker loop marks the block done in the
store only after ``process`` returned.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from funlib.geometry import Coordinate, Roi

from ..config import RunConfig, WorkersConfig
from ..geometry import Vec3, as_vec3, block_index, block_key, grid_shape
from ..volumes import Volume, open_volume


@dataclass(frozen=True)
class BlockInfo:
    """One block of a stage, in voxels."""

    key: str
    index: Vec3
    write_roi: Roi


class RunContext:
    """Geometry and paths of a run, derived from the config and the input metadata.

    Built by the driver and again in every worker (it only reads metadata)."""

    def __init__(self, cfg: RunConfig, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path

    @cached_property
    def raw(self) -> Volume:
        return open_volume(self.cfg.input.container, self.cfg.input.raw)

    @cached_property
    def volume_roi(self) -> Roi:
        """The processed volume, voxels (the configured sub-volume or the whole raw)."""
        raw_roi = self.raw.roi
        if self.cfg.input.roi_offset is not None:
            roi = Roi(Coordinate(self.cfg.input.roi_offset), Coordinate(self.cfg.input.roi_shape))
            return roi
        return raw_roi

    @property
    def voxel_size(self) -> Vec3:
        return as_vec3(self.cfg.input.voxel_size_nm)

    @property
    def output(self) -> str:
        return self.cfg.output.container

    @cached_property
    def run_dir(self) -> Path:
        """Logs, progress file and GPU leases: ``<output container>.run/``."""
        path = Path(str(Path(self.output)).rstrip("/") + ".run")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def open_output(self, dataset: str, mode: str = "r") -> Volume:
        return open_volume(self.output, dataset, mode=mode)


class Stage(abc.ABC):
    """A block-wise stage.  Subclasses set ``name`` and implement the hooks."""

    name: ClassVar[str]
    #: "grid" (blocks of the volume), "shards" (a 1-D list of work units)
    kind: ClassVar[str] = "grid"
    #: whether workers want a GPU (launchers lease one when the config lists GPUs)
    gpu: ClassVar[bool] = False

    def __init__(self, run: RunContext):
        self.run = run
        self.cfg = run.cfg

    # -- grid ---------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def workers(self) -> WorkersConfig:
        """The config section with workers, timeout, retries and launcher."""

    @property
    def stage_id(self) -> str:
        """Name used for daisy tasks and store records (unique per run)."""
        return self.name

    @property
    def block_shape(self) -> Vec3:
        return as_vec3(self.write_total_roi.shape)

    @property
    def context(self) -> Vec3:
        """How far each block reads beyond its write ROI (defines daisy dependencies)."""
        return (0, 0, 0)

    @property
    def write_total_roi(self) -> Roi:
        return self.run.volume_roi

    @property
    def grid_shape(self) -> Vec3:
        return grid_shape(self.write_total_roi.shape, self.block_shape)

    @property
    def total_blocks(self) -> int:
        z, y, x = self.grid_shape
        return z * y * x

    def block_info(self, write_roi: Roi) -> BlockInfo:
        index = block_index(write_roi, self.write_total_roi, self.block_shape)
        return BlockInfo(key=block_key(index), index=index, write_roi=write_roi.intersect(self.write_total_roi))

    def block_at(self, index) -> BlockInfo:
        """The block at grid ``index`` (z, y, x), as daisy would hand it to a worker."""
        shape = Coordinate(self.block_shape)
        return self.block_info(Roi(Coordinate(self.write_total_roi.offset) + Coordinate(index) * shape, shape))

    def task_rois(self) -> tuple[Roi, Roi, Roi]:
        """(total_roi, read_roi, write_roi) for a daisy Task, voxels."""
        ctx = Coordinate(self.context)
        block = Coordinate(self.block_shape)
        total = self.write_total_roi.grow(ctx, ctx)
        # daisy places blocks by the offset of write_roi within read_roi: the first
        # block reads from total.begin and writes from total.begin + ctx = volume begin
        read = Roi((0, 0, 0), block + ctx + ctx)
        write = Roi(ctx, block)
        return total, read, write

    # -- hooks ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Driver side, before any worker starts: create output datasets."""

    def setup(self) -> None:
        """Worker side, once per worker process."""

    @abc.abstractmethod
    def process(self, block: BlockInfo) -> dict[str, Any] | None:
        """Compute and write one block.  Must be safe to repeat."""

    def outputs(self) -> list[str]:
        """Array datasets this stage writes, chunked to its block grid (for `verify`)."""
        return []

    def describe(self) -> str:
        return f"{self.stage_id}: {self.total_blocks} blocks of {self.block_shape} over {self.write_total_roi}"


#: the host's id of the GPU a worker leased, where CUDA_VISIBLE_DEVICES cannot say it
#: (in a container the leased GPU is device 0)
GPU_ID_ENV = "EMBEDSEG_GPU_ID"


def worker_identity() -> dict[str, Any]:
    import socket

    return {
        "host": socket.gethostname(),
        "gpu": os.environ.get(GPU_ID_ENV) or os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
