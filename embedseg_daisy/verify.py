"""Check that every block the store marks done has its chunks on disk:
``python -m embedseg_daisy.verify CONFIG [--fix]``.

zarr reads a missing chunk as the fill value, so a chunk lost in a crash (zarr does
not fsync) would silently look like background.  ``verify`` lists blocks marked done
whose output chunks are missing; ``--fix`` clears their done marks so the next
``run`` redoes exactly those blocks (every write is idempotent).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from .config import load_config
from .errors import EmbedsegError
from .geometry import block_roi, parse_block_key
from .pipeline.driver import plan
from .pipeline.stage import RunContext
from .store import Store, open_store
from .volumes import chunk_paths


@dataclass
class MissingBlock:
    stage: str
    block: str
    dataset: str
    missing: int


def find_missing(run: RunContext, store: Store) -> list[MissingBlock]:
    missing: list[MissingBlock] = []
    for phase in plan(run):
        for stage in phase:
            datasets = stage.outputs()
            if not datasets:
                continue
            done = store.done_blocks(stage.stage_id)
            volumes = {}
            for name in datasets:
                try:
                    volumes[name] = run.open_output(name)
                except EmbedsegError:
                    volumes[name] = None
            for key in sorted(done):
                roi = block_roi(parse_block_key(key), stage.write_total_roi, stage.block_shape)
                for name, vol in volumes.items():
                    if vol is None:
                        missing.append(MissingBlock(stage.stage_id, key, name, -1))
                        continue
                    lost = sum(not p.exists() for p in chunk_paths(vol, roi))
                    if lost:
                        missing.append(MissingBlock(stage.stage_id, key, name, lost))
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedseg_daisy.verify", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--fix", action="store_true", help="clear done marks of blocks with missing chunks")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        run = RunContext(cfg, args.config)
        store = open_store(cfg)
        store.ping()
        missing = find_missing(run, store)
        if not missing:
            print("every block marked done has its chunks")
            return 0
        for m in missing:
            what = "dataset missing" if m.missing < 0 else f"{m.missing} chunk(s) missing"
            print(f"{m.stage} block {m.block}: {m.dataset}: {what}")
        if args.fix:
            by_stage: dict[str, set[str]] = {}
            for m in missing:
                by_stage.setdefault(m.stage, set()).add(m.block)
            for stage, blocks in by_stage.items():
                store.reset_blocks(stage, sorted(blocks))
            print(f"cleared {sum(len(b) for b in by_stage.values())} done mark(s); re-run to redo them")
            return 0
        return 1
    except EmbedsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
