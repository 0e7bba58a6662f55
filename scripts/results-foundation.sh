#!/usr/bin/env bash
# Reproduces the lifelong-baseline tables of RESULTS.md (seed 0; about 40 min on 2 cores).
# Hyper-parameter sweeps are selected on validation accuracy (val_avg in results.json), never on test.
set -euo pipefail
cd "$(dirname "$0")/.."
TS=.venv/bin/taskshare
OUT=${OUT:-runs/results}
M=finetune,ewc,lwf,expert-per-task,joint
$TS run split-mnist    --method $M --seed 0 --quiet --out $OUT/split-mnist
$TS run permuted-mnist --method $M --seed 0 --quiet --out $OUT/permuted-mnist
$TS run domain-stream  --method $M --seed 0 --quiet --out $OUT/domain-stream
for lam in 100 10000; do   # ewc.lambda=1000 (the default) is in $OUT/permuted-mnist/ewc
  $TS run permuted-mnist --method ewc --set ewc.lambda=$lam --seed 0 --quiet --out $OUT/permuted-ewc-lambda-$lam
done
for alpha in 1 10; do for old in true false; do
  $TS run permuted-mnist --method lwf --set lwf.alpha=$alpha --set lwf.train_old_heads=$old --seed 0 --quiet \
    --out $OUT/permuted-lwf-alpha-$alpha-old-heads-$old
done; done
