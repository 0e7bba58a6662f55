"""Wall time of one `taskshare run` with --jobs 1 (serial) and --jobs N: the same seeds x grid settings.

    OMP_NUM_THREADS=1 .venv/bin/python perf/jobs.py [--jobs 2] [--limit 2000] [--epochs 1]

Runs `split-mnist --method finetune,ewc --seed 0,1 --grid lr=0.1,0.01` (8 trainings) twice into temporary
folders, after a small warm-up run that fills the data caches: serially and with ``--jobs N`` (each worker
gets the torch threads // N, at least one: with OMP_NUM_THREADS=1 the serial run uses one core and every
worker one). Prints both wall times, their ratio and whether every results.json has the same accuracy matrix
and choice. With N idle cores the ratio approaches N, less the workers' start-up (importing torch) and the
serial pass that collects the runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(out: Path, jobs: int, limit: int, epochs: int) -> float:
    argv = [sys.executable, "-m", "taskshare.cli", "run", "split-mnist", "--method", "finetune,ewc",
            "--seed", "0,1", "--grid", "lr=0.1,0.01", "--limit", str(limit), "--epochs", str(epochs),
            "--quiet", "--jobs", str(jobs), "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_results(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("results.json"))
    pairs = [[json.loads((d / f).read_text()) for d in (a, b)] for f in files]
    return bool(files) and all(x["acc_matrix"] == y["acc_matrix"] and x.get("selection") == y.get("selection")
                               for x, y in pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=2000, help="training samples per task")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        timed_run(Path(tmp) / "warm-up", 1, 50, 1)   # data caches filled before either timed run
        serial = timed_run(Path(tmp) / "serial", 1, args.limit, args.epochs)
        parallel = timed_run(Path(tmp) / "jobs", args.jobs, args.limit, args.epochs)
        same = same_results(Path(tmp) / "serial", Path(tmp) / "jobs")
    print(f"8 trainings: serial {serial:.1f} s, --jobs {args.jobs} {parallel:.1f} s, "
          f"speed-up {serial / parallel:.2f}x, same results: {same}")


if __name__ == "__main__":
    main()
