#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite (slow and gpu tests excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export EMBEDSEG_MONGOECO_PYTHON="$PWD/.venv-mongoeco/bin/python"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest "$@"
