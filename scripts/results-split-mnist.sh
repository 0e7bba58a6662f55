#!/usr/bin/env bash
# RESULTS.md, "split-MNIST, 3 seeds, settings chosen on validation": each method's learning rate (and EWC's
# lambda, LwF's alpha) picked on the mean validation accuracy over seeds 0, 1, 2 (--grid; never the test
# split), then mean ± std over the three seeds. The choice and every score are in each results.json
# ("selection"); runs/results/split-mnist-3seeds/config.yaml repeats the whole thing. --resume keeps
# finished runs, so the script continues after a stop. The grid was {0.1, 0.03, 0.01} x lambda {100, 1000,
# 10000}; lr 0.3 and lambda 100000 were added because choices sat on those edges (LwF, expert-per-task and
# joint at lr 0.1, EWC at lambda 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/results/split-mnist-3seeds}
.venv/bin/taskshare run --jobs ${JOBS:-1} split-mnist --method finetune,ewc,lwf,expert-per-task,joint --seed 0,1,2 \
  --grid lr=0.3,0.1,0.03,0.01 --grid ewc.lambda=100,1000,10000,100000 --grid lwf.alpha=0.5,1,2 --quiet --resume \
  --out "$OUT"
# joint training chose lr 0.3, the grid's top: the next step up, lr 1.0, diverges (non-finite loss in epoch 1)
.venv/bin/taskshare run --jobs ${JOBS:-1} split-mnist --method joint --seed 0,1,2 --grid lr=1.0,0.3 --quiet --resume \
  --out "$OUT-joint-edge"
