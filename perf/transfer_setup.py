"""Where a transfer-images run spends its time: set-up, training and evaluation, per method, in one process.

Set-up: building the stream (once per process: decoding the four datasets, capping val/test) and, per
method, everything outside training and evaluation (the learner and its ImageNet MobileNetV2 weights,
hash-checked and read once per process, the patches' BN statistics at task ends, checkpoints, artifacts).
Training: `train_epoch` (the optimizer steps). Evaluation: every `evaluate` call (the test rows after each
task, each over all seen tasks, and the final validation pass). Timers wrap the driver's functions; nothing
else changes.

    python perf/transfer_setup.py [--methods head,scale-bias+head] [--limit 100] [--epochs 1]
        [--batch-size 128] [--max-eval 2000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from taskshare import progress
from taskshare.config import RunConfig
from taskshare.data import build_benchmark
from taskshare.engine import lifelong

SPENT = {"train": 0.0, "eval": 0.0}


def timed(fn, key):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[key] += time.perf_counter() - start
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="head,scale-bias+head")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-eval", type=int, default=2000)
    args = ap.parse_args()
    progress.set_quiet(True)
    lifelong.evaluate = timed(lifelong.evaluate, "eval")
    lifelong.train_epoch = timed(lifelong.train_epoch, "train")
    start = time.perf_counter()
    stream = build_benchmark("transfer-images", seed=0, options={"max_eval": args.max_eval})
    build = time.perf_counter() - start
    cfg = RunConfig(epochs=args.epochs, limit=args.limit, batch_size=args.batch_size, seed=0)
    print(f"transfer-images, limit {args.limit}, {args.epochs} epoch(s), batch {args.batch_size}, max_eval "
          f"{args.max_eval}, torch threads {torch.get_num_threads()} (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"  stream build (once per process): {build:.1f} s")
    for method in args.methods.split(","):
        SPENT.update(train=0.0, eval=0.0)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            res = lifelong.run_method(stream, method, cfg, out)
            total = time.perf_counter() - start
        other = total - SPENT["train"] - SPENT["eval"]
        print(f"  {method:24s} total {total:6.1f} s: training {SPENT['train']:6.1f}, evaluation {SPENT['eval']:6.1f}, "
              f"other set-up {other:5.1f}; (set-up + evaluation) / training "
              f"{(other + SPENT['eval']) / max(SPENT['train'], 1e-9):.2f}; avg acc {100 * res['avg_acc']:.1f}%")


if __name__ == "__main__":
    main()
