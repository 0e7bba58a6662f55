#!/usr/bin/env bash
# RESULTS.md, "AdaTask against equal weighting, each at its own tuned learning rate": synthetic-imbalanced,
# Adam, 30 epochs, seeds 0, 1, 2; each method's lr chosen on the mean validation Δm over the seeds against one
# STL reference per seed (trained at lr 1e-3, the run's own setting), never on test (--grid; the choice and
# every score are in each results.json under `selection`). --resume keeps finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/results/mt-tuned/synthetic-imbalanced}
.venv/bin/taskshare run synthetic-imbalanced --method stl,ew,adatask --epochs 30 --seed 0,1,2 \
  --set optimizer=adam --set lr=0.001 --grid lr=0.03,0.01,0.003,0.001 --quiet --resume --out "$OUT"
