#!/usr/bin/env bash
# RESULTS.md, "Patches on transfer-images (3 seeds, lr chosen on validation)": every patch kind on the ImageNet
# MobileNetV2 at 32 px with the settings of scripts/results-taps-lambda.sh (1,000 training samples per task,
# 3 epochs, batch 64, val/test capped at 1,000 per task), seeds 0, 1, 2; each method's lr from
# {0.03, 0.01, 0.003, 0.001} chosen on the mean validation accuracy over the seeds (--grid; every score and the
# choice are in each results.json under "selection"; never on test). Head-only chose 0.03, that grid's top, so
# its grid is {1.0, 0.3, 0.1, 0.03} (it chooses 0.3). Full fine-tuning and TAPS, on the same
# data and seeds, are in scripts/results-taps-lambda.sh. --resume continues after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-runs/results/patches-transfer}
IMG="--limit 1000 --epochs 3 --set batch_size=64 --set benchmark.max_eval=1000 --set model=mobilenetv2"
.venv/bin/taskshare run --jobs ${JOBS:-1} transfer-images --method scale-bias+head,depthwise+head,scale-bias+depthwise+head \
  $IMG --seed 0,1,2 --grid lr=0.03,0.01,0.003,0.001 --quiet --resume --out "$OUT"
.venv/bin/taskshare run --jobs ${JOBS:-1} transfer-images --method head $IMG --seed 0,1,2 --grid lr=1.0,0.3,0.1,0.03 --quiet \
  --resume --out "$OUT"
