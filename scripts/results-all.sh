#!/usr/bin/env bash
# Regenerates every run behind RESULTS.md, one script per section, in the order the sections appear. Each
# script uses --resume, so rerunning this after a stop continues where it stopped. On a 2-core CPU the whole
# set takes most of a day; with JOBS=N every script trains N of a run's seeds and settings at once
# (`taskshare run --jobs N`, one torch thread each: the same numbers). Each script's header says what it runs
# and which table it feeds, and `taskshare report OUT` prints any run folder's table (mean ± std over seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
for s in results-split-mnist results-foundation results-multitask results-patches-multitask \
         results-patches-transfer results-taps-lambda results-transfer-64 results-smallcnn-stream results-transfer \
         results-par-same-arch results-par-long results-par; do
  echo "== scripts/$s.sh"
  bash "scripts/$s.sh"
done
