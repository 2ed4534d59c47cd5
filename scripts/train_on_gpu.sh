#!/usr/bin/env bash
# Train both shipped tiny checkpoints on one CUDA GPU (as done for the shipped files):
# synthetic training volumes (seeds 1-4, 6-9) and a validation volume (seed 5) written as
# .npz, then the embedding and the baseline affinity nets side by side, batch 8, bf16
# autocast, each stopped after TRAIN_SECONDS (default 440 s); best.pt of each is exported.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SECONDS_LIMIT=${TRAIN_SECONDS:-440}
$PY scripts/gpu_make_npz.py runs/train_npz --train 1 2 3 4 6 7 8 9 --val 5
timeout "$SECONDS_LIMIT" $PY -m embedseg_daisy.train configs/train_embedding_tiny_gpu.json --no-progress &
timeout "$SECONDS_LIMIT" $PY -m embedseg_daisy.train configs/train_baseline_tiny_gpu.json --no-progress &
wait || true
mkdir -p checkpoints
cp runs/train_gpu/embedding_tiny/best.pt checkpoints/embedding_tiny.pt
cp runs/train_gpu/baseline_tiny/best.pt checkpoints/baseline_tiny.pt
