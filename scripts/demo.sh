#!/usr/bin/env bash
# Set up (idempotent), then run the demo: synthetic volume -> predict -> MWS -> contacts
# -> mean-embedding agglomeration -> evaluation, through daisy and the embedded SQLite store.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m embedseg_daisy.run configs/demo.json "$@"
.venv/bin/python -m embedseg_daisy.evaluate configs/demo.json
.venv/bin/python -m embedseg_daisy.status configs/demo.json
