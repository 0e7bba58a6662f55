#!/usr/bin/env bash
# RESULTS.md, "TAPS: lambda chosen on validation (3 seeds)": transfer-images with the ImageNet MobileNetV2 at 32 px
# (the settings of scripts/results-patches-transfer.sh: 1,000 training samples per task, 3 epochs, batch 64, val/test
# capped at 1,000 per task), seeds 0, 1, 2. TAPS on the frozen pretrained base (taps.backbone=model), the
# official penalty and the default warm-up (scaled to the run's epochs), BN statistics re-estimated at each
# task's end; lambda from {0, 0.03, 0.125, 0.5, 2, 8} chosen on the mean validation accuracy over the seeds (the
# grid was {0.5, 2, 8}; the choice sat on its weakest penalty twice, so it now ends at lambda 0). Full fine-tuning,
# the comparison the paper makes, with its lr from {0.01, 0.003} chosen the same way. Every score and the
# choice are in each results.json ("selection"); TAPS's active layers per task are under "taps". Nothing is
# selected on test. --resume continues after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-runs/results/taps-lambda}
IMG="--limit 1000 --epochs 3 --set batch_size=64 --set benchmark.max_eval=1000 --set model=mobilenetv2"
# Usage: scripts/results-taps-lambda.sh [runs|tables ...]   (default: both)
runs() {
  .venv/bin/taskshare run --jobs ${JOBS:-1} transfer-images --method taps $IMG --set taps.backbone=model --set taps.penalty=official \
    --set taps.bn_samples=1000 --seed 0,1,2 --grid taps.lambda=0,0.03,0.125,0.5,2,8 --quiet --resume --out "$OUT"
  .venv/bin/taskshare run --jobs ${JOBS:-1} transfer-images --method full $IMG --seed 0,1,2 --grid lr=0.01,0.003 --quiet --resume \
    --out "$OUT"
}
tables() {  # every grid setting: mean ± std test and validation accuracy, active layers and parameters per task
  .venv/bin/taskshare report --plots "$OUT/plots" "$OUT"/grid/taps/* "$OUT"/grid/full/*
  .venv/bin/python scripts/taps_active_layers.py "$OUT/grid/taps"
  OUT=$OUT .venv/bin/python - <<'PY'
import json, os
from pathlib import Path
out = Path(os.environ["OUT"])
for method in ("taps", "full"):
    sel = json.loads((out / "seed-0" / method / "results.json").read_text())["selection"]
    print(method, "chosen on validation:", sel["chosen"], "scores:", sel["scores"])
PY
}
for step in "${@:-runs tables}"; do for s in $step; do $s; done; done
