#!/usr/bin/env bash
# RESULTS.md, "Lifelong stream: domain-stream on the SmallCNN (3 seeds)": patches and TAPS where no pretrained
# backbone exists. domain-stream, 2,000 training samples per task, 3 epochs, batch 64, the SmallCNN, seeds
# 0, 1, 2. Patches train on the frozen random CNN, full fine-tuning trains a copy per task; their lr from
# {0.03, 0.01, 0.003} is chosen on the mean validation accuracy over the seeds. TAPS trains its base on the
# first task (taps.backbone=first-task, the default), official penalty, default warm-up, BN statistics
# re-estimated at each task's end; its lambda from {0.5, 2, 8} at lr 0.01 is chosen the same way. Every score
# and the choice are in each results.json ("selection"); nothing is selected on test. --resume continues.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-runs/results/smallcnn-stream}
LIFE="--limit 2000 --epochs 3 --set batch_size=64 --set model=cnn --seed 0,1,2 --quiet --resume"
.venv/bin/taskshare run --jobs ${JOBS:-1} domain-stream --method head,scale-bias+head,full $LIFE --grid lr=0.03,0.01,0.003 --out "$OUT"
.venv/bin/taskshare run --jobs ${JOBS:-1} domain-stream --method taps $LIFE --set taps.backbone=first-task --set taps.penalty=official \
  --set taps.bn_samples=2000 --grid taps.lambda=0.5,2,8 --out "$OUT-taps"
