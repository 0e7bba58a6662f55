#!/usr/bin/env bash
# RESULTS.md, "patches: multi-task against per-task transfer": transfer-images (MNIST, Fashion-MNIST,
# AnimalShape, optdigits on the ImageNet MobileNetV2 at 32 px), 1,000 training samples per task, 3 epochs,
# 1,000 test samples per task, seeds 0, 1, 2; each method's lr chosen on mean validation accuracy from
# {0.01, 0.003} (--grid, recorded under `selection`). --resume keeps finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/results/patches-multitask}
.venv/bin/taskshare run --jobs ${JOBS:-1} transfer-images --method scale-bias+head,patches-multitask --limit 1000 --epochs 3 \
  --seed 0,1,2 --set batch_size=64 --set benchmark.max_eval=1000 --set patches-multitask.kinds=scale-bias+head \
  --grid lr=0.01,0.003 --quiet --resume --out "$OUT"
