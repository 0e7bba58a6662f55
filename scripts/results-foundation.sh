#!/usr/bin/env bash
# RESULTS.md, "permuted-MNIST" and "domain-stream (MLP)": the lifelong baselines on the 784-400-400 MLP (SGD
# momentum 0.9, batch 128, 2 epochs per task), seeds 0, 1, 2. Each method's setting is chosen on the mean
# validation accuracy over the seeds (--grid; every score and the choice are in each results.json under
# "selection"; the test split is never looked at), then mean ± std over the seeds of the chosen setting.
# split-MNIST is scripts/results-split-mnist.sh. --resume keeps finished runs, so the script continues after
# a stop. Both grids are widened past the edges the first grid's choices sat on (lr {0.1, 0.03, 0.01}, lambda
# {100, 1000, 10000}, alpha {0.5, 1, 2}): permuted-MNIST by lr 0.3 and lambda 10, domain-stream by lr 0.3
# (EWC, expert-per-task and joint chose 0.1), lambda 10 (EWC chose 100) and alpha 4 (LwF chose 2).
# Usage: scripts/results-foundation.sh [permuted|domain ...]   (default: both; they are independent,
# so two shells can run one each, one core apiece)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-runs/results}
M=finetune,ewc,lwf,expert-per-task,joint
permuted() {  # 10 tasks of 60,000 images each (about a minute per run on one core); LwF as in the paper (old
  # heads trained) or with the old heads fixed, chosen on validation
  .venv/bin/taskshare run --jobs ${JOBS:-1} permuted-mnist --method $M --seed 0,1,2 --grid lr=0.3,0.1,0.03,0.01 \
    --grid ewc.lambda=10,100,1000,10000 --grid lwf.train_old_heads=true,false --quiet --resume \
    --out "$OUT/permuted-mnist-3seeds"
}
domain() {  # 5,000 training samples per task
  .venv/bin/taskshare run --jobs ${JOBS:-1} domain-stream --method $M --limit 5000 --seed 0,1,2 \
    --grid lr=0.3,0.1,0.03,0.01 --grid ewc.lambda=10,100,1000,10000 --grid lwf.alpha=0.5,1,2,4 --quiet --resume \
    --out "$OUT/domain-stream-3seeds"
}
for step in "${@:-permuted domain}"; do for s in $step; do $s; done; done
