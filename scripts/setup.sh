#!/usr/bin/env bash
# Set up a fresh machine: .venv (Python >= 3.11, CPU torch 2.13.0 from the local wheel
# cache when present, the package with test extras) and .venv-mongoeco (Python 3.13 with
# mongoeco, the MongoDB wire-protocol stand-in the store tests talk to).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "need Python >= 3.11" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first: 2.13.0 resolves to the CPU wheel on these machines; a bare `torch` would pull a CUDA build.
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"

# mongoeco needs Python >= 3.13; optional (store tests against it are skipped without it).
PY313=""
for cand in python3.13 /root/.pyenv/versions/3.13*/bin/python3.13; do
  if [ -x "$(command -v "$cand" 2>/dev/null || echo "$cand")" ] && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then PY313=$cand; break; fi
done
if [ -n "$PY313" ]; then
  if [ ! -x .venv-mongoeco/bin/python ]; then "$PY313" -m venv .venv-mongoeco; fi
  .venv-mongoeco/bin/python -c 'import mongoeco, bson' 2>/dev/null || .venv-mongoeco/bin/python -m pip install -q "mongoeco[wire]" || echo "warning: could not install mongoeco; MongoDB wire tests will be skipped" >&2
else
  echo "warning: no Python 3.13 found; MongoDB wire tests will be skipped" >&2
fi
