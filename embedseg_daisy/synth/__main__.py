"""CLI: ``python -m embedseg_daisy.synth OUT.zarr --shape Z Y X --seed N``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .io import write_volume
from .volume import generate_volume


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m embedseg_daisy.synth",
        description="Write a synthetic serial-section EM volume (raw uint8, labels uint64) to a zarr container.",
    )
    ap.add_argument("out", help="output zarr container, e.g. synth.zarr (datasets raw and labels)")
    ap.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), required=True, help="volume shape in voxels")
    ap.add_argument("--seed", type=int, required=True, help="random seed (same seed, same volume)")
    ap.add_argument(
        "--voxel-size", nargs=3, type=int, metavar=("Z", "Y", "X"), default=(29, 12, 12), help="nm (default 29 12 12)"
    )
    ap.add_argument("--missing-sections", type=int, default=0, metavar="K", help="K sections with blank raw")
    ap.add_argument("--slips", type=int, default=0, metavar="K", help="K sections whose raw alone is shifted")
    ap.add_argument(
        "--steps", type=int, default=0, metavar="K", help="K misalignment steps (raw and labels shift from z on)"
    )
    ap.add_argument("--preview", metavar="PNG", help="also write a montage of sections and an xz reslice")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.shape) < 1:
        print(f"error: --shape must be positive, got {args.shape}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        vol = generate_volume(
            tuple(args.shape),
            args.seed,
            missing_sections=args.missing_sections,
            slips=args.slips,
            steps=args.steps,
            voxel_size=tuple(args.voxel_size),
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_gen = time.perf_counter() - t0
    write_volume(args.out, vol, voxel_size=tuple(args.voxel_size))
    if args.preview:
        from .preview import write_preview

        title = f"{args.out} seed {args.seed}"
        write_preview(args.preview, vol.raw, vol.labels, voxel_size=tuple(args.voxel_size), title=title)
    if not args.quiet:
        summary = {
            "out": args.out,
            "shape": list(vol.raw.shape),
            "objects": vol.meta["n_objects"],
            "self_touches": len(vol.self_touches),
            "missing_sections": vol.meta["missing_sections"],
            "slips": vol.meta["slips"],
            "steps": vol.meta["steps"],
            "generate_s": round(t_gen, 2),
            "total_s": round(time.perf_counter() - t0, 2),
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
