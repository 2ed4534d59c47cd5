"""Look at a run: ``python -m embedseg_daisy.view CONFIG [--bind 127.0.0.1] [--png DIR]``.

Starts a neuroglancer viewer (bound to 127.0.0.1 unless ``--bind`` says otherwise)
with raw, nearest-neighbour affinities, the background mask, fragments and the
segmentations before and after mean-embedding agglomeration, and prints its URL.
``--png DIR`` writes section previews instead, for headless machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .config import RunConfig, load_config
from .errors import EmbedsegError
from .pipeline.stage import RunContext
from .volumes import Volume, open_volume

#: (dataset, kind) in display order
LAYERS = [
    ("affinities", "affinities"),
    ("mask", "image"),
    ("fragments", "segmentation"),
    ("segmentation", "segmentation"),
    ("segmentation_mea", "segmentation"),
    ("baseline_segmentation", "segmentation"),
    ("baseline_segmentation_mea", "segmentation"),
]


def available_layers(cfg: RunConfig) -> dict[str, Volume]:
    out: dict[str, Volume] = {"raw": open_volume(cfg.input.container, cfg.input.raw)}
    if cfg.input.labels:
        try:
            out["labels"] = open_volume(cfg.input.container, cfg.input.labels)
        except EmbedsegError:
            pass
    for name, _ in LAYERS:
        try:
            out[name] = open_volume(cfg.output.container, name)
        except EmbedsegError:
            continue
    return out


def _colour(labels: np.ndarray) -> np.ndarray:
    """Random but stable colours per id (0 black)."""
    ids = labels.astype(np.uint64)
    h = (ids * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], axis=-1).astype(np.uint8)
    rgb[labels == 0] = 0
    return rgb


def write_pngs(cfg: RunConfig, outdir: Path, sections: list[int] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunContext(cfg)
    roi = run.volume_roi
    layers = available_layers(cfg)
    nz = roi.shape[0]
    sections = sections or sorted({nz // 4, nz // 2, (3 * nz) // 4})
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for z in sections:
        from funlib.geometry import Roi

        sec = Roi((roi.begin[0] + z, roi.begin[1], roi.begin[2]), (1, roi.shape[1], roi.shape[2]))
        panels = []
        for name, vol in layers.items():
            data = vol.read(sec)
            if name == "affinities":
                rgb = np.moveaxis(data[:3, 0], 0, -1)
                panels.append((name + " (nn, zyx→rgb)", rgb))
            elif name in ("raw", "mask"):
                panels.append((name, data[0]))
            else:
                panels.append((name, _colour(data[0])))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
        for ax, (title, img) in zip(np.atleast_1d(axes), panels):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{cfg.name}: section z={roi.begin[0] + z}", fontsize=9)
        path = outdir / f"section_{roi.begin[0] + z:05d}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def start_viewer(cfg: RunConfig, bind: str = "127.0.0.1", port: int = 0):
    import neuroglancer

    neuroglancer.set_server_bind_address(bind, port)
    viewer = neuroglancer.Viewer()
    layers = available_layers(cfg)
    vs = list(cfg.input.voxel_size_nm)
    dims = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=vs)
    with viewer.txn() as s:
        for name, vol in layers.items():
            offset = list(vol.roi.begin)
            src = vol.array._source_data
            if name == "affinities":
                cdims = neuroglancer.CoordinateSpace(names=["c^", "z", "y", "x"], units=["", "nm", "nm", "nm"], scales=[1] + vs)
                s.layers[name] = neuroglancer.ImageLayer(
                    source=neuroglancer.LocalVolume(data=src, dimensions=cdims, voxel_offset=[0] + offset),
                    shader="void main() { emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)), toNormalized(getDataValue(2)))); }",
                )
            elif name in ("raw", "mask"):
                s.layers[name] = neuroglancer.ImageLayer(
                    source=neuroglancer.LocalVolume(data=src, dimensions=dims, voxel_offset=offset)
                )
            else:
                s.layers[name] = neuroglancer.SegmentationLayer(
                    source=neuroglancer.LocalVolume(data=src, dimensions=dims, voxel_offset=offset)
                )
    return viewer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedseg_daisy.view", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--bind", default="127.0.0.1", help="address the viewer listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--png", metavar="DIR", help="write section previews to DIR instead of starting a viewer")
    parser.add_argument("--sections", type=int, nargs="*", help="section indices (relative to the volume) for --png")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.png:
            for path in write_pngs(cfg, Path(args.png), args.sections):
                print(path)
            return 0
        try:
            import neuroglancer  # noqa: F401
        except ImportError:
            print("error: neuroglancer is not installed (pip install 'embedseg-daisy[view]'), or use --png DIR", file=sys.stderr)
            return 2
        viewer = start_viewer(cfg, args.bind, args.port)
        print(viewer, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    except EmbedsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
