"""Why EWC diverges on the CTrL streams (RESULTS.md, "PAR on CTrL streams"): the largest diagonal-Fisher entry.

Trains EWC's ResNet-18 on the first task of ctrl-s-pl with the settings of scripts/results-par.sh, then prints
the largest entries of the Fisher sum A. The penalty lambda/2 * A * (theta - theta*)^2 has curvature lambda * A;
SGD with momentum beta on a quadratic of curvature c is stable only while lr * c < 2 * (1 + beta).

    .venv/bin/python scripts/ewc_fisher_max.py [--lambda 10]
"""
from __future__ import annotations

import argparse

import torch

from taskshare.data import build_benchmark
from taskshare.config import RunConfig, check_options
from taskshare.engine.loop import NonFiniteGuard, train_epoch
from taskshare.methods import METHODS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lambda", dest="lam", type=float, default=10.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    stream = build_benchmark("ctrl-s-pl", seed=0, options={"n_large": 1000, "n_small": 200,
                                                           "val_fraction": 0.3333, "max_eval": 200})
    cfg = RunConfig(epochs=10, batch_size=32, lr=0.01, momentum=0.9, model="resnet18", seed=0)
    ewc = METHODS["ewc"]
    learner = ewc(cfg, check_options(ewc.Options, {"lambda": args.lam}, "ewc"), stream[0].input_shape)
    task = stream[0]
    learner.begin_task(task, 0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(cfg.epochs):
        train_epoch(learner, task.train, cfg.batch_size, gen, torch.device("cpu"), NonFiniteGuard(lambda: task.name))
    learner.end_task(task)
    top = sorted(((float(v.max()), n) for n, v in learner.fisher_sum.items()), reverse=True)[:4]
    print(f"after {task.name}: largest Fisher entries " + ", ".join(f"{n} {v:.1f}" for v, n in top))
    c = args.lam * top[0][0]
    print(f"lr * lambda * max F = {cfg.lr} * {args.lam:g} * {top[0][0]:.1f} = {cfg.lr * c:.2f}; "
          f"SGD momentum {cfg.momentum} is stable below {2 * (1 + cfg.momentum):.2f}")


if __name__ == "__main__":
    main()
