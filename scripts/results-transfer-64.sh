#!/usr/bin/env bash
# RESULTS.md, "transfer-images at 64 px, 10 epochs": every patch kind, TAPS and full fine-tuning on the ImageNet
# MobileNetV2 with images resized to 64 px (<method>.image_size=64), 1,000 training samples per task, 10 epochs,
# batch 64, validation and test capped at 1,000 per task (fixed, stratified), seeds 0, 1, 2. TAPS as in
# scripts/results-taps-lambda.sh (frozen pretrained base, official penalty, default warm-up, BN statistics
# re-estimated at each task's end, lr 0.01). Each method's setting is chosen on the mean validation accuracy over
# the seeds from its grid below (--grid; every score and the choice are in each results.json under
# "selection"; never on test). The first value of each grid is the setting chosen at 32 px / 3 epochs when
# these grids were set (scripts/results-patches-transfer.sh, scripts/results-taps-lambda.sh; their head-only and
# TAPS grids were widened later and now choose lr 0.3 and lambda 0 at 32 px); the others are its neighbours on
# either side, and one more step where the choice sat on an edge (lr 0.03 for the two scale-bias patches,
# lambda 0.03 and then 0 for TAPS; 0.03 stays chosen).
# Usage: scripts/results-transfer-64.sh [carried|grid|tables ...]   (default: all)
#   carried: only the first value of each grid (the 32 px choice), 3 seeds: about 1.7 core-hours
#   grid:    every value (the carried runs are kept by --resume): about 5 core-hours in all
#   (measured on a loaded 2-core Xeon: 2-8 minutes per run, full fine-tuning and TAPS the longest)
# JOBS=2 runs two trainings at a time; METHODS="..." runs a subset (two shells with disjoint subsets also use
# two cores). --resume continues after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-runs/results/transfer-64}
IMG="--limit 1000 --epochs 10 --set batch_size=64 --set benchmark.max_eval=1000 --set model=mobilenetv2"
TAPS="--set taps.backbone=model --set taps.penalty=official --set taps.bn_samples=1000"
METHODS=${METHODS:-full taps scale-bias+depthwise+head depthwise+head scale-bias+head head}   # longest first
declare -A GRID=(
  [head]="lr=0.03,0.1,0.01"
  [scale-bias+head]="lr=0.003,0.01,0.001,0.03"
  [depthwise+head]="lr=0.01,0.03,0.003"
  [scale-bias+depthwise+head]="lr=0.003,0.01,0.001,0.03"
  [full]="lr=0.003,0.01,0.001"
  [taps]="taps.lambda=0.5,2,0.125,0.03,0"
)

one() {  # $1 = method, $2 = its grid
  local m=$1 extra=""
  [ "$m" = taps ] && extra=$TAPS
  .venv/bin/taskshare run --jobs ${JOBS:-1} transfer-images --method "$m" $IMG --set "$m.image_size=64" $extra \
    --seed 0,1,2 --grid "$2" --quiet --resume --out "$OUT/$m"
}
carried() { for m in $METHODS; do one "$m" "${GRID[$m]%%,*}"; done; }
grid() { for m in $METHODS; do one "$m" "${GRID[$m]}"; done; }
tables() {  # per method: its choice, per-task test accuracy (mean over seeds), avg ± std, parameters and bytes
  # per task; every candidate's validation score (taskshare report); TAPS's active layers per lambda
  local dirs=()
  for m in $METHODS; do [ -f "$OUT/$m/summary.json" ] && dirs+=("$OUT/$m"); done
  .venv/bin/taskshare report --markdown --plots "$OUT/plots" "${dirs[@]}"
  OUT=$OUT METHODS=$METHODS .venv/bin/python - <<'PY'
import json, os, statistics as st
from pathlib import Path
out = Path(os.environ["OUT"])
header = False
for m in reversed(os.environ["METHODS"].split()):
    runs = [json.loads(f.read_text()) for f in sorted((out / m).glob(f"seed-*/{m}/results.json"))]
    if not runs:
        continue
    if not header:
        print(f"| method | chosen on val | {' | '.join(runs[0]['tasks'])} | avg test acc (%) | new params/task "
              "| artifact/task | seeds |")
        header = True
    last = [[100 * v for v in r["acc_matrix"][-1]] for r in runs]
    per_task = " | ".join(f"{st.mean(col):.1f}" for col in zip(*last))
    avg = [100 * r["avg_acc"] for r in runs]
    added = st.mean(n for r in runs for n in r["params"]["added_per_task"])
    kb = st.mean(b for r in runs for b in r["artifact_bytes"].values()) / 1024
    chosen = ", ".join(f"{k} {v}" for k, v in runs[0]["selection"]["chosen"].items())
    print(f"| {m} | {chosen} | {per_task} | {st.mean(avg):.2f} ± {st.stdev(avg) if len(avg) > 1 else 0:.2f} "
          f"| {added:,.0f} | {kb:,.0f} KB | {len(runs)} |")
PY
  if [ -d "$OUT/taps/grid/taps" ]; then .venv/bin/python scripts/taps_active_layers.py "$OUT/taps/grid/taps"; fi
}
for step in "${@:-carried grid tables}"; do
  for s in $step; do "$s"; done
done
