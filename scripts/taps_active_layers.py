"""One line per TAPS --grid setting under GRID_DIR (OUT/grid/taps): seeds, the share of gated layers that ended
task-specific (mean, and the range over tasks and seeds), new parameters per task and the warm-up used.
Usage: .venv/bin/python scripts/taps_active_layers.py GRID_DIR [...]   (the results scripts' `tables` steps)"""
import json
import statistics as st
import sys
from pathlib import Path

for grid_dir in sys.argv[1:]:
    for setting in sorted(p for p in Path(grid_dir).iterdir() if p.is_dir()):
        runs = [json.loads(f.read_text()) for f in sorted(setting.glob("seed-*/taps/results.json"))]
        tasks = [t for r in runs for t in r["taps"]["tasks"].values()]
        if not tasks:
            continue
        active = [t["active"] / t["layers"] for t in tasks]
        added = [n for r in runs for n in r["params"]["added_per_task"]]
        print(f"taps {setting.name}: {len(runs)} seeds, active layers {100 * st.mean(active):.1f}% of "
              f"{tasks[0]['layers']} ({100 * min(active):.0f}-{100 * max(active):.0f}% per task and seed), new "
              f"params/task {st.mean(added):,.0f}, penalty from epoch {runs[0]['taps']['warmup_epochs']}")
