#!/usr/bin/env bash
# Reproduces the lifelong-baseline tables of RESULTS.md (seed 0). With --resume, finished runs are kept and
# interrupted ones continue from their checkpoints, so the script can be rerun after a stop.
# Hyper-parameter variants are compared on validation accuracy (val_avg in results.json), never on test.
set -euo pipefail
cd "$(dirname "$0")/.."
TS=".venv/bin/taskshare run --seed 0 --quiet --resume"
OUT=${OUT:-runs/results}
M=finetune,ewc,lwf,expert-per-task,joint
$TS split-mnist    --method $M --out $OUT/split-mnist
$TS permuted-mnist --method lwf --set lwf.alpha=1 --set lwf.train_old_heads=false \
  --out $OUT/permuted-lwf-frozen-heads-alpha-1   # LwF with the old heads frozen (the paper trains them)
$TS domain-stream  --method $M --limit 5000 --out $OUT/domain-stream-limit-5000
$TS permuted-mnist --method $M --out $OUT/permuted-mnist
$TS permuted-mnist --method lwf --set lwf.alpha=10 --set lwf.train_old_heads=false \
  --out $OUT/permuted-lwf-frozen-heads-alpha-10
for lam in 100 10000; do   # the default ewc.lambda=1000 is in $OUT/permuted-mnist/ewc
  $TS permuted-mnist --method ewc --set ewc.lambda=$lam --out $OUT/permuted-ewc-lambda-$lam
done
