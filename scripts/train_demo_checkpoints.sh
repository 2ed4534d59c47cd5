#!/usr/bin/env bash
# Reproduce the shipped demo checkpoints (tiny presets) on CPU:
# synthetic training volumes (seeds 1-4, 64x512x512, with slips and a missing section),
# a validation volume (seed 5), then the embedding net and the baseline affinity net.
# Test and benchmark volumes use other seeds (1001+, 2001+).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PY=.venv/bin/python
mkdir -p runs/train
for s in 1 2 3 4; do
  [ -d runs/train/synth_train_$s.zarr ] || $PY -m embedseg_daisy.synth runs/train/synth_train_$s.zarr --shape 64 512 512 --seed $s --slips 2 --missing-sections 1
done
[ -d runs/train/synth_val.zarr ] || $PY -m embedseg_daisy.synth runs/train/synth_val.zarr --shape 32 384 384 --seed 5
$PY -m embedseg_daisy.train configs/train_embedding_tiny.json "$@"
$PY -m embedseg_daisy.train configs/train_baseline_tiny.json "$@"
