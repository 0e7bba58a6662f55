#!/usr/bin/env bash
# Reproduces the "Multi-task (issue 5)" tables of RESULTS.md: seed 0, Adam lr 1e-3, batch 128 for every method
# (AdaTask uses its Adam variant at the same lr). Each benchmark first trains its single-task baselines
# (OUT/stl) and reports delta_m against them. Roughly 10-15 min per benchmark on 2 CPU cores.
# Usage: scripts/results-multitask.sh [benchmark ...]   (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN="$PY -m taskshare.cli run"
M=stl,ew,uw,dwa,gradnorm,pcgrad,mgda,cagrad,adatask,adatask+pcgrad
COMMON="--seed 0 --set optimizer=adam --set lr=0.001 --set batch_size=128"
epochs() { case $1 in synthetic-imbalanced) echo 30;; multimnist) echo 8;; adult) echo 8;; clothing-reviews) echo 30;; esac; }
for b in "${@:-synthetic-imbalanced multimnist adult clothing-reviews}"; do
  for bb in $b; do
    $RUN "$bb" --method $M --epochs "$(epochs "$bb")" $COMMON --out "runs/results/mt/$bb"
  done
done
# AU (task dominance per shared layer) under Adam (ew) and AdaTask on the synthetic benchmark:
# writes runs/results/mt-au/synthetic-imbalanced/{ew,adatask}/au.png and au_compare.png
if [[ $# -eq 0 || " $* " == *" synthetic-imbalanced "* ]]; then
  $RUN synthetic-imbalanced --method ew,adatask --epochs 30 $COMMON \
    --set ew.record_au=true --set adatask.record_au=true --out runs/results/mt-au/synthetic-imbalanced
fi
