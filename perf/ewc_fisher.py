"""EWC vs finetune on split-MNIST (MLP, 1 epoch), and the Fisher estimate alone, closed form vs vmap.

The whole run: `run_method` for finetune, ewc, and ewc with its pre-issue-14 code patched in (vmap Fisher,
autograd through the written-out penalty) (defaults: 1,024 Fisher samples per task, empirical Fisher), in
one process, rounds alternating between them; the best time of each is kept, so machine noise affects all
alike. The Fisher alone: `diagonal_fisher` on task 0's first 1,024 training samples through a randomly
initialised 784-400-400 MLP (the cost does not depend on the weights), closed form (the default) vs the
vmap path (`fast=False`, what EWC ran before issue 14), alternating, best kept; it also prints their
largest relative difference.

    python perf/ewc_fisher.py [--rounds 3] [--fisher empirical|true]
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
from taskshare.engine.lifelong import run_method
from taskshare.engine.run import versions
from taskshare.methods.lifelong import ewc
from taskshare.methods.lifelong.ewc import diagonal_fisher
from taskshare.models import TaskNet, build_backbone, new_head


def before_regularizer(self, x, features):
    """EWC's penalty as written before issue 14 (autograd through the expression)."""
    if not self.fisher_sum or self.options.lambda_ == 0:
        return None
    total = 0.0
    for n, p in self.shared().items():
        a, b = self.fisher_sum[n], self.anchor_sum[n]
        total = total + (a * p * p - 2 * b * p).sum()
    return 0.5 * self.options.lambda_ * total


def whole_run(stream, method: str, fisher: str) -> tuple[float, float]:
    """`ewc (before)`: the pre-issue-14 code paths (vmap Fisher, autograd penalty), patched in for one run."""
    cfg = RunConfig(epochs=1, model="mlp", seed=0, methods={"ewc": {"fisher": fisher}})
    saved = ewc.diagonal_fisher, ewc.EWC.regularizer
    if method == "ewc (before)":
        ewc.diagonal_fisher = lambda *a, **k: saved[0](*a, **k, fast=False)
        ewc.EWC.regularizer = before_regularizer
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            res = run_method(stream, method.split()[0], cfg, out)
            return time.perf_counter() - start, res["avg_acc"]
    finally:
        ewc.diagonal_fisher, ewc.EWC.regularizer = saved


def fisher_alone(stream, fast: bool, fisher: str) -> tuple[float, dict]:
    net = TaskNet(build_backbone("mlp", (1, 28, 28), 0))
    head = new_head(400, 2, torch.Generator().manual_seed(0))
    x, y = stream[0].train.take(torch.arange(1024))
    params = {f"backbone.{n}": p for n, p in net.backbone.named_parameters()}
    start = time.perf_counter()
    f = diagonal_fisher(net, params, head, x, y, fisher, torch.Generator().manual_seed(0), fast=fast)
    return time.perf_counter() - start, f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fisher", default="empirical", choices=["empirical", "true"])
    args = ap.parse_args()
    progress.set_quiet(True)
    stream = build_benchmark("split-mnist", seed=0)
    times: dict[str, list[float]] = {"finetune": [], "ewc": [], "ewc (before)": [], "fisher vmap": [],
                                     "fisher closed form": []}
    accs: dict[str, float] = {}
    for _ in range(args.rounds):
        for method in ("finetune", "ewc", "ewc (before)"):
            t, accs[method] = whole_run(stream, method, args.fisher)
            times[method].append(t)
        t, ref = fisher_alone(stream, False, args.fisher)
        times["fisher vmap"].append(t)
        t, new = fisher_alone(stream, True, args.fisher)
        times["fisher closed form"].append(t)
    err = max(((new[n] - ref[n]).abs().max() / ref[n].abs().max()).item() for n in ref)
    print(f"split-mnist, MLP, 1 epoch, fisher={args.fisher}, torch threads {torch.get_num_threads()} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), CPU {versions()['cpu']}, "
          f"{args.rounds} alternating rounds")
    best = {k: min(v) for k, v in times.items()}
    for k, v in times.items():
        acc = f"   avg acc {100 * accs[k]:.2f}%" if k in accs else ""
        print(f"  {k:19s} best {best[k]:7.3f} s   (all: {', '.join(f'{s:.2f}' for s in v)}){acc}")
    print(f"  ewc / finetune (best/best): {best['ewc'] / best['finetune']:.2f}  (target <= 1.5); before issue 14: "
          f"{best['ewc (before)'] / best['finetune']:.2f}")
    speedup = best["fisher vmap"] / best["fisher closed form"]
    print(f"  Fisher of one task (1,024 samples): vmap / closed form {speedup:.1f}x; largest relative difference "
          f"{err:.1e}")


if __name__ == "__main__":
    main()
