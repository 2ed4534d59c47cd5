"""Train an embedding or affinity net: ``python -m embedseg_daisy.train config.json``.

Options: ``--resume`` (continue from ``out_dir/latest.pt``), ``--steps N`` (total
steps, overriding the config), ``--device cpu|cuda|auto``, ``--threads N``,
``--no-progress``.  The config is a ``TrainConfig`` (see
``embedseg_daisy.training.config``); ``--schema`` prints its JSON schema.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from embedseg_daisy.errors import EmbedsegError


def main(argv: list[str] | None = None) -> int:
    # Passive OpenMP waiting: on shared cores, spinning threads made CPU training steps
    # 1.3-2x slower here (measured under contention).  Effective only before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(prog="python -m embedseg_daisy.train", description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", help="training config (JSON)")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/latest.pt")
    p.add_argument("--steps", type=int, help="total number of steps (overrides the config)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the config")
    p.add_argument("--threads", type=int, help="torch CPU threads (overrides the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar; log lines to stderr")
    p.add_argument("--schema", action="store_true", help="print the config's JSON schema and exit")
    args = p.parse_args(argv)

    from embedseg_daisy.training.config import TrainConfig, load_train_config

    if args.schema:
        print(json.dumps(TrainConfig.model_json_schema(), indent=2))
        return 0
    if not args.config:
        p.error("the config argument is required")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    try:
        cfg = load_train_config(args.config)
        update = {}
        if args.threads is not None:
            update["num_threads"] = args.threads
        if args.no_progress:
            update["progress"] = False
        if update:
            cfg = cfg.model_copy(update=update)
        from embedseg_daisy.training.loop import train

        result = train(cfg, resume=args.resume, steps=args.steps, device=args.device)
    except EmbedsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume from the last checkpoint", file=sys.stderr)
        return 130
    print(
        json.dumps(
            {
                "step": result.step,
                "model": str(result.model),
                "best": str(result.best) if result.best else None,
                "latest": str(result.latest),
                "last_train": result.last_train,
                "best_val": result.best_val,
                "seconds_per_step": result.seconds_per_step,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
