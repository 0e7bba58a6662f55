"""TAPS cost: a training step vs a full fine-tuning step, and the merged task model's forward vs the base's.

Backbones (``--models``): ``mobilenetv2`` (ImageNet MobileNetV2, 1x28x28 resized to 32 px, batch 64, 52 gated
convolutions) and ``minilm`` (all-MiniLM-L6-v2, 64 tokens, batch 16, 36 gated linear layers), each under a
TaskNet with a 10-class head. Random init with the same shapes when a weights package is missing.

- ``full step``: the plain network, every parameter trainable: forward, cross-entropy, backward, SGD step.
- ``TAPS step``: the same network wrapped by `taps.wrap` (frozen base, per-task delta and score per layer),
  one task active, its deltas, scores, norms and head trainable; loss + official penalty (lambda 1). Every
  layer active (scores 0.15) and a quarter active (the others' scores set below tau): in training the gate
  is a straight-through autograd op, so an inactive layer still computes W + 0 * dW.
- ``base forward``: the unwrapped network, eval, inference_mode; ``merged forward``: `taps.merged_model` of
  the task (W + dW folded into plain layers), likewise; ``gated forward``: the wrapped network with the task
  active (inference skips the add for inactive layers). The merged model's logits equal the gated ones.

Timing: ``--steps`` calls per round after 2 warm-ups; rounds alternate over the variants so machine noise
hits all alike; the minimum per-call time over ``--rounds`` rounds is reported.

    python perf/taps_step.py [--models mobilenetv2,minilm] [--threads 1] [--rounds 3] [--steps 3]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from taskshare.methods.taps import gated_layers, merged_model, task_penalty, wrap
from taskshare.models import TaskNet, new_head


def backbone(name: str):
    if name == "mobilenetv2":
        from taskshare.models.mobilenetv2 import MobileNetV2Backbone
        torch.manual_seed(0)
        bb, x = MobileNetV2Backbone((1, 28, 28), 1.0, 32), torch.rand(64, 1, 28, 28)
        try:
            bb.load_imagenet()
        except Exception:  # noqa: BLE001 - cost does not depend on the values
            return bb, x, "MobileNetV2 1.0 (random init), 32 px, batch 64"
        return bb, x, "MobileNetV2 1.0, 32 px, batch 64"
    from taskshare.models.minilm import minilm
    try:
        bb = minilm()
    except Exception:  # noqa: BLE001
        bb = minilm(pretrained=False)
    ids = torch.randint(1000, 20000, (16, 64))
    return bb, torch.stack([ids, torch.ones_like(ids)], 1).float(), "all-MiniLM-L6-v2, 64 tokens, batch 16"


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def bench(name: str, args) -> None:
    bb, x, desc = backbone(name)
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    head = new_head(bb.out_dim, 10, torch.Generator().manual_seed(0))
    plain = TaskNet(bb)
    plain.head.weight, plain.head.bias = torch.nn.Parameter(head["head.weight"]), torch.nn.Parameter(head["head.bias"])
    full_opt = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    base_eval = copy.deepcopy(plain).eval()

    gated = copy.deepcopy(plain)
    tt = wrap(gated)
    tt.add_task("t", {k: v.clone() for k, v in head.items()})
    tt.activate("t")
    layers = list(gated_layers(gated))
    with torch.no_grad():  # a trained-looking task: non-zero deltas
        for n in layers:
            tt.tensors("t")[f"{n}.delta"].normal_(0, 1e-3)
    taps_opt = torch.optim.SGD(tt.parameters("t"), lr=1e-3, momentum=0.9)

    def step(net, opt, penalty):
        net.train()
        loss = F.cross_entropy(net(x), y)
        if penalty:
            loss = loss + task_penalty(tt, "t", 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def set_active(frac):
        with torch.no_grad():
            for i, n in enumerate(layers):
                tt.tensors("t")[f"{n}.score"].fill_(0.15 if i < frac * len(layers) else 0.05)

    train = {"full fine-tuning step": lambda: step(plain, full_opt, False),
             f"TAPS step, all {len(layers)} layers active": lambda: (set_active(1.0), step(gated, taps_opt, True)),
             "TAPS step, 1/4 of the layers active": lambda: (set_active(0.25), step(gated, taps_opt, True))}
    set_active(0.25)
    merged = merged_model(tt, "t")
    gated.eval()
    with torch.inference_mode():
        diff = float((merged(x) - gated(x)).abs().max())
    infer = {"base forward": lambda: base_eval(x), "merged task forward (1/4 active)": lambda: merged(x),
             "gated task forward (1/4 active, not merged)": lambda: gated(x)}

    def run(fns, inference):
        best = dict.fromkeys(fns, float("inf"))
        ctx = torch.inference_mode if inference else torch.enable_grad
        with ctx():
            if inference:
                gated.eval()
            for fn in fns.values():
                timed(fn, 2)
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    best[k] = min(best[k], timed(fn, args.steps))
        return best

    tr, inf = run(train, False), run(infer, True)
    print(f"\n## {desc}, {torch.get_num_threads()} thread(s), min over {args.rounds} rounds of {args.steps}\n")
    print("| what | ms | ratio |\n|---|---|---|")
    ref = tr["full fine-tuning step"]
    for k, v in tr.items():
        print(f"| {k} | {1000 * v:.0f} | {v / ref:.2f}x full step |")
    ref = inf["base forward"]
    for k, v in inf.items():
        print(f"| {k} | {1000 * v:.1f} | {v / ref:.2f}x base forward |")
    print(f"\nmax |merged - gated| logit difference: {diff:.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mobilenetv2,minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        bench(name.strip(), args)


if __name__ == "__main__":
    main()
