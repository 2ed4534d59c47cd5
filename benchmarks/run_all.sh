#!/usr/bin/env bash
# The measurements behind BENCHMARKS.md and docs/scale.md, in the order they were run
# (one at a time, on an otherwise idle machine).  About 3 hours on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
$py benchmarks/segment.py                                                   # stages vs bare kernels, 2 block sizes
$py benchmarks/segment.py --blocks 16x128x128 --contexts 4x16x16,8x16x16,16x16x16 --methods stages \
    --out benchmarks/results/segment_context.json                           # context vs fragments vs cost
$py benchmarks/relabel.py
$py benchmarks/contacts.py
$py benchmarks/mea.py
$py benchmarks/end_to_end.py                                                # tiny net, whole pipeline
$py benchmarks/end_to_end.py --predictions oracle --shape 64,512,512 --out benchmarks/results/end_to_end_oracle.json
$py benchmarks/overhead.py
$py benchmarks/peer_volara.py
$py benchmarks/scaling.py --shapes 16,256,256 32,512,512 48,768,768 96,1024,1024 --exact-region-vox 2097152 \
    --keep --out benchmarks/results/scaling_local.json                      # local levels above 2 Mvox
$py benchmarks/agglomerate_memory.py benchmarks/work/scaling/96x1024x1024/config.json \
    --regions 1:1,1,1 2:0,0,0 2:1,1,1 3:0,0,0                               # needs the kept run above
$py benchmarks/scaling.py --shapes 16,256,256 32,512,512 48,768,768 96,1024,1024 --exact-region-vox none
$py benchmarks/local_levels.py                                              # exact vs local levels: VI, graph sizes
$py benchmarks/tiled_last_level.py                                          # tiled vs untiled last level: VI
$py benchmarks/scaling.py --shapes 96,1024,1024 --exact-region-vox 2097152 --last-level-tile-blocks 2,2,2 \
    --keep --out benchmarks/results/scaling_tiles.json
$py benchmarks/agglomerate_memory.py benchmarks/work/scaling/96x1024x1024/config.json \
    --regions 3_tiles:1,1,1 3_tiles:1,2,2 3:0,0,0 --out benchmarks/results/agglomerate_memory_tiles.json
$py benchmarks/components_memory.py                                         # components step per merged cluster
$py benchmarks/invariance.py --network
$py benchmarks/predict.py                                                   # CPU: stage vs bare forward
$py benchmarks/mws_kernel.py
$py benchmarks/embedding_quality.py --patches 12
$py benchmarks/accuracy.py
$py benchmarks/mea_decisions.py runs/accuracy/seed2001/config.json           # after accuracy.py
$py benchmarks/segment.py --shapes 16,256,256 32,512,512 96,1024,1024 --blocks 32x256x256 --repeats 1 \
    --methods stages,ours_whole,mwatershed_whole --ours-whole-max-vox 40000000 \
    --out benchmarks/results/segment_scaling.json
# GPU (a device machine with an H100; predict.py is the predict stage's own benchmark):
#   python benchmarks/predict.py --device cuda --preset paper --volume 64 768 768 --batch-size 16 --out benchmarks/results/predict_h100_paper_b16.json
#   python benchmarks/predict.py --device cuda --preset tiny  --volume 64 768 768 --batch-size 16 --out benchmarks/results/predict_h100_tiny_b16.json
