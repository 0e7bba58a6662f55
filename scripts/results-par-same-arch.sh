#!/usr/bin/env bash
# RESULTS.md, "PAR against the baselines on PAR's own cell expert (3 seeds)": the CPU-sized CTrL protocol of
# scripts/results-par.sh, but every baseline runs on PAR's default expert architecture (`model=par-cell`:
# C = 16, 4 cells of 4 nodes, a fixed separable-convolution genotype) instead of the 1.1M-parameter ResNet-18,
# seeds 0, 1, 2, every method with the protocol's SGD lr 0.01, momentum 0.9, batch 32, 10 epochs. EWC's lambda
# from {10, 1000} is chosen on the mean validation accuracy over the seeds (--grid; recorded under "selection"
# in each results.json; a diverging setting is recorded, not chosen). Nothing is selected on test.
# S_pl gets every baseline; S^- (CPU time) PAR, expert-per-task, fine-tuning and LwF. EWC diverged at the protocol's
# lr 0.01 with both lambdas, so `ewc-low-lr` reruns it on S_pl at lr 0.003 and 0.001.
# `lr-grid` chooses the cell baselines' lr on validation on S_pl and S^- (expert-per-task, fine-tuning and LwF;
# EWC has its own grids, ewc-low-lr, ewc-s-minus and ewc-more-streams).
# `more-streams`: S^+, S_in and S_out with expert-per-task, fine-tuning and LwF at the protocol's lr 0.01;
# `more-streams-lr-grid` chooses their lr on validation on those three streams with lr-grid's grids;
# `ewc-more-streams` runs EWC there as ewc-s-minus does.
# Usage: scripts/results-par-same-arch.sh [ctrl-s-pl|ctrl-s-minus|ewc-low-lr|ewc-s-minus|lr-grid|more-streams|
#        more-streams-lr-grid|ewc-more-streams ...]
# (default: all; each stream is independent, so two shells can run one each, one core apiece). --resume continues
# after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-runs/results/par-same-arch}
CTRL="--epochs 10 --set batch_size=32 --set benchmark.n_large=1000 --set benchmark.n_small=200
      --set benchmark.val_fraction=0.3333 --set benchmark.max_eval=1000 --set model=par-cell --seed 0,1,2"
MORE_STREAMS="ctrl-s-plus ctrl-s-in ctrl-s-out"
cell() {  # $1 = the stream, $2 = the methods, then extra options and --out: one run under the protocol above
  .venv/bin/taskshare run --jobs ${JOBS:-1} "$1" --method "$2" $CTRL "${@:3}" --quiet --resume
}
ctrl-s-pl() {
  cell ctrl-s-pl par,expert-per-task,finetune,lwf,ewc --grid ewc.lambda=10,1000 --out "$OUT/ctrl-s-pl" || echo "ewc diverged with both lambdas at lr 0.01 (see ewc-low-lr)"
}
ctrl-s-minus() {
  cell ctrl-s-minus par,expert-per-task,finetune,lwf --out "$OUT/ctrl-s-minus"
}
ewc-low-lr() {  # EWC diverged at lr 0.01 with both lambdas on S_pl: lower lrs, one process per lambda (two cores);
  # each picks its lr on validation, then the lambda with the better chosen mean validation accuracy is reported
  for lam in 10 1000; do
    cell ctrl-s-pl ewc --set ewc.lambda=$lam --grid lr=0.003,0.001 --out "$OUT/ctrl-s-pl-ewc-lambda-$lam" || echo "ewc lambda $lam diverged at every lr" &
  done
  wait
}
ewc-lambda-10() {  # EWC on each stream given at lambda 10 (lambda 1000 diverged at every lr on S_pl), its lr
  # chosen on validation, OUT/<stream>-ewc-lambda-10
  for s in "$@"; do
    cell "$s" ewc --set ewc.lambda=10 --grid lr=0.003,0.001 --out "$OUT/$s-ewc-lambda-10"
  done
}
ewc-s-minus() { ewc-lambda-10 ctrl-s-minus; }
ewc-more-streams() { ewc-lambda-10 $MORE_STREAMS; }
lr-grid() {  # the cell baselines' lr chosen on validation (mean over the seeds), one folder per stream,
  # OUT/<stream>-lr-grid. PAR's own lr is chosen by scripts/results-par.sh (PAR does not read `model`, so those
  # runs are its cell runs). Each grid gained one step where S_pl's first grid chose its edge: expert-per-task's
  # began as {0.03, 0.01, 0.003} (0.001 added), fine-tuning's and LwF's as {0.1, 0.03, 0.01, 0.003} (they chose
  # 0.1 or 0.03 on the ResNet-18; 0.3 added for fine-tuning, 0.001 for LwF); on S^- and S_out LwF chose 0.1, its
  # top, so 0.3 was added there, and on S^+ 0.001, its bottom, so 0.0003 was added there. LR_GRID_METHODS and
  # CELL_LR_GRID_STREAMS pick subsets.
  local -A lrs=([expert-per-task]=0.03,0.01,0.003,0.001 [finetune]=0.3,0.1,0.03,0.01,0.003)
  for s in ${CELL_LR_GRID_STREAMS:-ctrl-s-pl ctrl-s-minus}; do
    lrs[lwf]=0.1,0.03,0.01,0.003,0.001
    [ "$s" = ctrl-s-minus ] || [ "$s" = ctrl-s-out ] && lrs[lwf]=0.3,${lrs[lwf]}
    [ "$s" = ctrl-s-plus ] && lrs[lwf]=${lrs[lwf]},0.0003
    for m in ${LR_GRID_METHODS:-expert-per-task finetune lwf}; do
      cell "$s" "$m" --grid "lr=${lrs[$m]}" --out "$OUT/$s-lr-grid"
    done
  done
}
more-streams() {  # PAR's rows for these streams are scripts/results-par.sh's (PAR does not read `model`)
  for s in $MORE_STREAMS; do
    cell "$s" expert-per-task,finetune,lwf --out "$OUT/$s"
  done
}
more-streams-lr-grid() {  # lr-grid on S^+, S_in and S_out (OUT/<stream>-lr-grid)
  CELL_LR_GRID_STREAMS=$MORE_STREAMS lr-grid
}
for step in "${@:-ctrl-s-pl ctrl-s-minus ewc-low-lr ewc-s-minus lr-grid more-streams more-streams-lr-grid ewc-more-streams}"; do for s in $step; do $s; done; done
