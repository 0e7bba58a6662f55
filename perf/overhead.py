"""Library overhead: one epoch of split-mnist with the MLP through taskshare vs a minimal PyTorch loop.

Both sides train the same network (784-400-400 MLP, one 2-way head per task, SGD lr 0.01 momentum 0.9,
batch 128) for one epoch on each of the 5 tasks, then evaluate every seen task on its test split, as the
runner does. The hand-written loop iterates over float32 tensors converted beforehand (the fastest a
plain loop gets); taskshare pays everything it adds: uint8 -> float batches, the non-finite-loss guard,
per-task checkpoints, artifacts and results.json. Rounds alternate between the two and the best time of
each is kept, so machine noise affects both alike.

    python perf/overhead.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from taskshare.data import build_benchmark
from taskshare.config import RunConfig
from taskshare.engine.lifelong import run_method
from taskshare.methods.base import task_seed
from taskshare.models import TaskNet, build_backbone, head_logits, new_head


def hand_loop(tasks, seed: int) -> float:
    """The minimal loop: plain tensors, plain model, plain optimizer."""
    data = [(t.train.to_tensors(), t.test.to_tensors(), t.num_classes) for t in tasks]
    start = time.perf_counter()
    net = TaskNet(build_backbone("mlp", (1, 28, 28), task_seed(seed, 0, salt=1)))
    heads = []
    for i, ((x, y), _, classes) in enumerate(data):
        head = {k: v.requires_grad_() for k, v in new_head(400, classes, torch.Generator().manual_seed(i)).items()}
        heads.append(head)
        opt = torch.optim.SGD(list(net.backbone.parameters()) + list(head.values()), lr=0.01, momentum=0.9)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(i))
        for s in range(0, len(y), 128):
            idx = order[s:s + 128]
            loss = F.cross_entropy(head_logits(net.backbone(x[idx]), head), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.inference_mode():
            for j in range(i + 1):
                (xt, yt), h = data[j][1], heads[j]
                (head_logits(net.backbone(xt), h).argmax(1) == yt).float().mean().item()
    return time.perf_counter() - start


def taskshare_run(stream, seed: int) -> float:
    cfg = RunConfig(epochs=1, batch_size=128, lr=0.01, model="mlp", seed=seed)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_method(stream, "finetune", cfg, out)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    stream = build_benchmark("split-mnist", seed=args.seed)
    taskshare_run(stream, args.seed), hand_loop(stream.tasks, args.seed)  # warm-up
    ours, plain = [], []
    for _ in range(args.rounds):
        ours.append(taskshare_run(stream, args.seed))
        plain.append(hand_loop(stream.tasks, args.seed))
    print(f"split-mnist, MLP, 1 epoch, torch threads {torch.get_num_threads()}, {args.rounds} alternating rounds")
    print(f"  hand-written loop: best {min(plain):.3f} s   (all: {', '.join(f'{t:.2f}' for t in plain)})")
    print(f"  taskshare runner:  best {min(ours):.3f} s   (all: {', '.join(f'{t:.2f}' for t in ours)})")
    print(f"  overhead ratio (best/best): {min(ours) / min(plain):.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
