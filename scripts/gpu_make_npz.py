"""Generate synthetic training volumes as .npz (no zarr needed), several in parallel.

    python scripts/gpu_make_npz.py OUT_DIR --train 1 2 3 4 --val 5 [--shape 64 512 512]

Used on accelerator machines that lack zarr/funlib; the training loader reads .npz."""

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def make(args):
    out, seed, shape, slips, missing = args
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from embedseg_daisy.synth import generate_volume

    vol = generate_volume(tuple(shape), seed, slips=slips, missing_sections=missing)
    np.savez(out, raw=vol.raw, labels=vol.labels)
    return str(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--train", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--val", type=int, nargs="+", default=[5])
    p.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512])
    p.add_argument("--val-shape", type=int, nargs=3, default=[32, 384, 384])
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out / f"train_{s}.npz", s, a.shape, 2, 1) for s in a.train]
    jobs += [(out / f"val_{s}.npz", s, a.val_shape, 0, 0) for s in a.val]
    with ProcessPoolExecutor(len(jobs)) as ex:
        for path in ex.map(make, jobs):
            print(path, flush=True)


if __name__ == "__main__":
    main()
