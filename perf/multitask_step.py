"""Multi-task training-step cost: every method relative to equal weighting, and per-task gradient cost.

Two shared encoders with K linear heads (cross-entropy, 10 classes each), batch 128, random inputs:

- ``mlp``: 784-256-256 MLP (ReLU);
- ``cnn``: LeNet on 1x36x36 (the MultiMNIST encoder: conv5(10)-pool-conv5(20)-pool-FC(50)).

Per-task gradients use ``grad_mode=auto`` (the loop on CPU; see methods/multioutput/gradients.py).

Table 1: the median time of one ``MultiTaskTrainer.step`` (forward, the method's backward work, the
optimizer step; Adam, lr 1e-3) divided by the ``ew`` step, for K = 2, 3, 10.
Table 2: forward + K per-task gradients of the shared parameters (loop of retained-graph
``autograd.grad`` vs one batched ``autograd.grad(is_grads_batched=True)``) divided by forward + one
backward of the summed loss.

Timing: each configuration runs ``--steps`` steps per round after 3 warm-up steps; rounds alternate over
the configurations so machine noise hits all alike; the best (minimum) per-step time over ``--rounds``
rounds is reported (on a shared machine the minimum is the least noisy estimate of the cost itself).

    python perf/multitask_step.py [--rounds 5] [--steps 10] [--threads 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.methods.multioutput import METHODS, MultiOutputNet, MultiTaskTrainer, per_task_gradients
from taskshare.methods.multioutput.gradients import choose_mode
from taskshare.models import MLP, LeNet

KS = (2, 3, 10)
BATCH = 128


def make(encoder: str, K: int, seed: int):
    torch.manual_seed(seed)
    if encoder == "mlp":
        enc, x = MLP((784,), (256, 256)), torch.randn(BATCH, 784)
    else:
        enc, x = LeNet((1, 36, 36)), torch.rand(BATCH, 1, 36, 36)
    net = MultiOutputNet(enc, {f"t{k}": nn.Linear(enc.out_dim, 10) for k in range(K)})
    ys = {f"t{k}": torch.randint(0, 10, (BATCH,)) for k in range(K)}
    return net, x, ys


def step_timer(encoder: str, K: int, method: str, seed: int):
    net, x, ys = make(encoder, K, seed)
    tr = MultiTaskTrainer(net, {t: F.cross_entropy for t in ys}, method, optimizer="adam", lr=1e-3, seed=seed)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            tr.step(x, ys)
        return (time.perf_counter() - t0) / n
    run(3)
    return run


def grad_timer(encoder: str, K: int, mode: str, seed: int):
    net, x, ys = make(encoder, K, seed)
    shared = list(net.encoder.parameters())

    def once():
        out = net(x)
        losses = [F.cross_entropy(out[t], ys[t]) for t in ys]
        if mode == "sum":
            torch.stack(losses).sum().backward(inputs=shared)
            for p in shared:
                p.grad = None
        else:
            per_task_gradients(losses, shared, mode)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            once()
        return (time.perf_counter() - t0) / n
    run(3)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoders", default="mlp,cnn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    encoders = args.encoders.split(",")
    methods = list(METHODS)
    steps = {(e, K, m): step_timer(e, K, m, args.seed) for e in encoders for K in KS for m in methods}
    grads = {(e, K, m): grad_timer(e, K, m, args.seed)
             for e in encoders for K in KS for m in ("sum", "loop", "batched")}
    times: dict = {k: [] for k in [*steps, *grads]}
    for _ in range(args.rounds):
        for k, run in [*steps.items(), *grads.items()]:
            times[k].append(run(args.steps))
    med = {k: min(v) for k, v in times.items()}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, seed {args.seed}, "
          f"best of {args.rounds} rounds x {args.steps} steps\n")
    print("Training step relative to ew (ew column: ms per step)\n")
    head = ["encoder", "K", "ew (ms)"] + [m for m in methods if m != "ew"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for e in encoders:
        for K in KS:
            ew = med[(e, K, "ew")]
            cells = [e, str(K), f"{1000 * ew:.1f}"] + [f"{med[(e, K, m)] / ew:.2f}" for m in methods if m != "ew"]
            print("| " + " | ".join(cells) + " |")
    print("\nPer-task gradients of the shared parameters (forward included) relative to forward + one backward "
          "of the summed loss\n")
    print("| encoder | K | forward+backward (ms) | loop | batched | auto picks |")
    print("|---|---|---|---|---|---|")
    for e in encoders:
        for K in KS:
            base = med[(e, K, "sum")]
            pick = choose_mode(make(e, K, args.seed)[0])
            print(f"| {e} | {K} | {1000 * base:.1f} | {med[(e, K, 'loop')] / base:.2f} | "
                  f"{med[(e, K, 'batched')] / base:.2f} | {pick} |")


if __name__ == "__main__":
    main()
