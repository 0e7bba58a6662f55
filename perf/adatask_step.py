"""AdaTask optimizer cost: our fused step vs the official ``Adam_with_AdaTask`` (and our previous version).

Toy (float64, seeded): shared encoder Linear(16, 32)-tanh-Linear(32, 32)-tanh, K = 3 regression heads
Linear(32, 1) with MSE, batch 64, ``--steps`` (50) steps.

- (a) full training step: forward + K per-task gradients of the shared parameters + heads on the summed
  loss + optimizer step. Official: its own ``backward_and_step`` (K retained backward passes, then the
  summed loss for the heads); ours: ``MultiTaskTrainer(..., "adatask").step``. Ratio = official / ours.
- (b) optimizer step alone, on fixed gradients (official ``step(shared, heads, grads, head_grads)``, ours
  ``AdaTask.step(G)`` with the heads' ``.grad`` set). Ratio = official / ours.
- (c) max |theta_official - theta_ours| over all parameters after the full-step run (same start, same data).
  The official code adds the K task updates one by one to theta, ours sums them first: last-bit differences.

The official optimizer is imported from a local copy of its file (github.com/EnnengYang/AdaTask,
``adatask.py``); nothing of it is kept in this repository. ``--previous`` takes a copy of our previous
per-parameter implementation (``git show 4a2b4df:src/taskshare/methods/multioutput/adatask.py``) and times
all three variants (adam, rmsprop, adagrad) against it, with the max difference of the parameters.

Timing: rounds alternate over the contenders so machine noise hits all alike; the best (minimum) time of
``--steps`` steps over ``--rounds`` rounds is reported.

    python perf/adatask_step.py --official /tmp/adatask_official/adatask.py \\
        [--previous /tmp/adatask_prev.py] [--rounds 7] [--steps 50] [--threads 1]
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from pathlib import Path

import torch
from torch import nn

from taskshare.methods.multioutput import MultiOutputNet, MultiTaskTrainer
from taskshare.methods.multioutput.adatask import make_adatask
from taskshare.methods.multioutput.gradients import FlatLayout, per_task_gradients

K, BATCH, LR = 3, 64, 1e-3
TASKS = [f"t{k}" for k in range(K)]


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, Path(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def toy(seed: int):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
    net = MultiOutputNet(enc, {t: nn.Linear(32, 1) for t in TASKS}).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, 16, dtype=torch.float64, generator=g)
    y = torch.randn(BATCH, K, dtype=torch.float64, generator=g)
    return net, x, {t: y[:, k] for k, t in enumerate(TASKS)}


def mse(o, t):
    return ((o[:, 0] - t) ** 2).mean()


def losses_of(net, x, ys):
    out = net(x)
    return [mse(out[t], ys[t]) for t in TASKS]


def official_full(mod, seed: int):
    net, x, ys = toy(seed)
    shared, heads = list(net.encoder.parameters()), list(net.heads.parameters())
    opt = mod.Adam_with_AdaTask(shared + heads, lr=LR, n_tasks=K, task_weight=[1.0] * K)
    return net, lambda: opt.backward_and_step(torch.stack(losses_of(net, x, ys)), shared, heads)


def ours_full(variant: str, seed: int, prev=None):
    net, x, ys = toy(seed)
    tr = MultiTaskTrainer(net, {t: mse for t in TASKS}, "adatask", optimizer=variant, lr=LR)
    tr.prepare(x, ys)
    if prev is not None:  # the previous implementation, driven by the same trainer
        tr.optimizer = prev.make_adatask(variant, tr.shared, tr.task_params, K, lr=LR,
                                         missing="skip", generator=tr.generator)
    return net, lambda: tr.step(x, ys)


def fixed_grads(seed: int):
    net, x, ys = toy(seed)
    shared, heads = list(net.encoder.parameters()), list(net.heads.parameters())
    L = losses_of(net, x, ys)
    G = per_task_gradients(L, shared, "loop", retain_graph=True)
    hg = torch.autograd.grad(torch.stack(L).sum(), heads)
    return net, shared, heads, G, [g.detach() for g in hg]


def official_alone(mod, seed: int):
    net, shared, heads, G, hg = fixed_grads(seed)
    opt = mod.Adam_with_AdaTask(shared + heads, lr=LR, n_tasks=K, task_weight=[1.0] * K)
    rows = [[v.clone() for v in FlatLayout.of(shared).views(G[k])] for k in range(K)]
    return lambda: opt.step(shared, heads, rows, hg)


def ours_alone(variant: str, seed: int, module=None):
    net, shared, heads, G, hg = fixed_grads(seed)
    for p, g in zip(heads, hg):
        p.grad = g
    opt = (module.make_adatask if module is not None else make_adatask)(variant, shared, heads, K, lr=LR)
    return lambda: opt.step(G)


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - t0


def race(makers: dict, rounds: int, steps: int) -> dict[str, float]:
    """Best time of `steps` calls per contender; each round builds fresh contenders (same seed)."""
    best = {k: float("inf") for k in makers}
    for _ in range(rounds):
        for k, make in makers.items():
            fn = make()
            fn()  # warm-up (state allocation)
            best[k] = min(best[k], timed(fn, steps))
    return best


def max_diff(make_a, make_b, steps: int) -> float:
    (na, fa), (nb, fb) = make_a(), make_b()
    for _ in range(steps):
        fa()
        fb()
    return max((p - q).abs().max().item() for p, q in zip(na.parameters(), nb.parameters()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="path to a local copy of the official adatask.py")
    ap.add_argument("--previous", help="path to a copy of our previous adatask.py (times all variants)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    off = load(a.official, "adatask_official")
    prev = load(a.previous, "adatask_previous") if a.previous else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"float64, K={K}, batch {BATCH}, best of {a.rounds} rounds x {a.steps} steps\n")
    full = race({"official": lambda: official_full(off, a.seed)[1], "ours": lambda: ours_full("adam", a.seed)[1]},
                a.rounds, a.steps)
    alone = race({"official": lambda: official_alone(off, a.seed), "ours": lambda: ours_alone("adam", a.seed)},
                 a.rounds, a.steps)
    diff = max_diff(lambda: official_full(off, a.seed), lambda: ours_full("adam", a.seed), a.steps)
    ms = lambda t: f"{1000 * t / a.steps:.3f}"  # noqa: E731
    print("| Adam-AdaTask | official (ms/step) | ours (ms/step) | official / ours |")
    print("|---|---|---|---|")
    for name, r in (("(a) full training step", full), ("(b) optimizer step alone", alone)):
        print(f"| {name} | {ms(r['official'])} | {ms(r['ours'])} | {r['official'] / r['ours']:.2f}x |")
    print(f"\n(c) max |theta_official - theta_ours| after {a.steps} full steps: {diff:.3e}")
    if prev is None:
        return
    print("\n| variant | previous full (ms) | ours full (ms) | ratio | previous step (ms) | ours step (ms) | ratio "
          "| max diff |")
    print("|---|---|---|---|---|---|---|---|")
    for v in ("adam", "rmsprop", "adagrad"):
        f = race({"prev": lambda: ours_full(v, a.seed, prev)[1], "ours": lambda: ours_full(v, a.seed)[1]},
                 a.rounds, a.steps)
        s = race({"prev": lambda: ours_alone(v, a.seed, prev), "ours": lambda: ours_alone(v, a.seed)},
                 a.rounds, a.steps)
        d = max_diff(lambda: ours_full(v, a.seed, prev), lambda: ours_full(v, a.seed), a.steps)
        print(f"| {v} | {ms(f['prev'])} | {ms(f['ours'])} | {f['prev'] / f['ours']:.2f}x | {ms(s['prev'])} | "
              f"{ms(s['ours'])} | {s['prev'] / s['ours']:.2f}x | {d:.1e} |")


if __name__ == "__main__":
    main()
