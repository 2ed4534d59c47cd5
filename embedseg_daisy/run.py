"""Run a reconstruction: ``python -m embedseg_daisy.run CONFIG [--dry-run] [--force]``.

Builds the daisy pipeline of the configured stages and runs it with progress bars.
Re-running the same command resumes: blocks the store records as done are skipped.
Exit status: 0 all blocks done; 1 some blocks failed; 2 bad config or input;
3 store unreachable; 4 the output or store holds a different run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .config import load_config
from .errors import ConfigError, EmbedsegError, InputError, RunConflictError, StoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedseg_daisy.run", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run configuration (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="print the stages, block counts and ROIs; run nothing")
    parser.add_argument(
        "--force", action="store_true", help="resume even though result-affecting config fields changed"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (the JSONL file is still written)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from .pipeline.driver import execute

    try:
        cfg = load_config(args.config)
        outcome = execute(args.config, cfg, force=args.force, dry=args.dry_run, progress=not args.no_progress)
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except RunConflictError as err:
        print(f"error: {err}", file=sys.stderr)
        return 4
    except EmbedsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not outcome.ok:
        for message in outcome.messages:
            print(f"failed: {message}", file=sys.stderr)
        print("some blocks failed; fix the cause and re-run the same command to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
