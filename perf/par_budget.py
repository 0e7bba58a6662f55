"""PAR's cost against expert-per-task on the same short run (issue 14): wall time ratio and accuracy gap.

    OMP_NUM_THREADS=1 .venv/bin/python perf/par_budget.py [--benchmark domain-stream] [--limit 2000]
        [--epochs 1] [--threads 1] [--set par.search_epochs=10 ...] [--out /tmp/par-budget]

Runs ``taskshare run BENCHMARK --method expert-per-task,par`` in one process (the same data, seed and
thread count), then prints each method's time_s and avg_acc, PAR's per-task search seconds and decisions,
the time ratio par / expert-per-task and the accuracy gap in points. Targets (issue 14): ratio <= 20 and
gap >= -5 points. Extra ``--set`` values go to the run (e.g. a fixed ``par.search_epochs``); ``--set
model=par-cell`` runs expert-per-task on PAR's own cell architecture (PAR ignores ``model``): the
same-architecture ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from taskshare.engine.run import cpu_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="domain-stream")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=None, help="output directory (default: a temporary one, removed)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="par-budget-"))
    exe = Path(sys.executable).with_name("taskshare")
    cmd = [str(exe), "run", args.benchmark, "--method", "expert-per-task,par", "--limit", str(args.limit),
           "--epochs", str(args.epochs), "--out", str(out), "--quiet"]
    for s in args.set:
        cmd += ["--set", s]
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env={**os.environ, **env})
    res = {m: json.loads((out / m / "results.json").read_text()) for m in ("expert-per-task", "par")}
    print(f"command: {' '.join(cmd[1:])}")
    print(f"threads: {args.threads}; CPU: {cpu_info()['model']}; cores: {os.cpu_count()}; "
          f"load: {os.getloadavg()[0]:.1f}")
    for m, r in res.items():
        print(f"{m:16s} time_s {r['time_s']:8.1f}  avg_acc {r['avg_acc']:.4f}  final row "
              + " ".join(f"{a:.3f}" for a in r["acc_matrix"][-1]))
    par = res["par"]
    print("par search seconds:", par.get("timing", {}).get("par_search_s"))
    for d in par["decisions"]:
        print(f"  {d['task']:14s} {d['action']:16s} expert {d['expert']} search {d.get('search_epochs')} samples "
              f"on {d.get('search_n')}")
    ratio = par["time_s"] / res["expert-per-task"]["time_s"]
    gap = 100 * (par["avg_acc"] - res["expert-per-task"]["avg_acc"])
    print(f"time ratio par / expert-per-task: {ratio:.1f}x (target <= 20x)")
    print(f"accuracy gap par - expert-per-task: {gap:+.1f} points (target >= -5)")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
