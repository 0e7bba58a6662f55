"""Model patches at inference: mixed-task batches and the memory of serving many tasks.

Network: the ImageNet MobileNetV2 (random init with the same shapes if its package is missing) under a
TaskNet, patch ``--kinds`` (default scale-bias+depthwise+head, the costliest per-sample path), 10-class heads,
1x28x28 inputs resized to ``--size`` px, eval mode, ``torch.inference_mode``.

1. Speed, batch ``--batch`` (default 64) and 8 tasks (``--batch/8`` samples each):
   - ``single``: one task's batch of the same size (tt.use(task); net(x)): the cost of a plain forward;
   - ``mixed``: one `mixed_forward` over the batch, sample n with the patch of task_ids[n] (stacks built once);
   - ``sequential``: the 8 tasks one after another, each on its own samples (8 forwards of batch/8);
   plus the largest |mixed - per-task| logit difference (mixed_forward is meant to be exact).
   Timing: ``--steps`` calls per round after 2 warm-ups; rounds alternate over the three so machine noise
   hits them alike; the minimum per-call time over ``--rounds`` rounds is reported.
2. Memory of serving ``--tasks`` (default 100) tasks: base + every task's patch resident in one TaskTensors.
   Tensor bytes (base, patches) are counted exactly; RSS is the process's resident set (/proc) before and after
   creating the tasks; both are compared with the sum of the per-task artifact files (`save_patch`, BN
   statistics included) and with 100 whole model copies.

    python perf/patches_mixed.py [--size 32] [--batch 64] [--tasks 100] [--threads 1] [--rounds 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from taskshare.core import TaskTensors
from taskshare.methods.patches import mixed_forward, patch_slots, save_patch, stack_tasks
from taskshare.models import TaskNet, new_head
from taskshare.models.mobilenetv2 import MobileNetV2Backbone


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(size: int, kinds: str) -> tuple[TaskNet, TaskTensors, str]:
    torch.manual_seed(0)
    bb = MobileNetV2Backbone((1, 28, 28), 1.0, size)
    try:
        bb.load_imagenet()
        weights = "ImageNet MobileNetV2"
    except Exception as e:  # noqa: BLE001 - speed and memory do not depend on the values
        weights = f"random-init MobileNetV2 ({type(e).__name__})"
    net = TaskNet(bb).eval()
    tt = TaskTensors(net, patch_slots(net, kinds))
    for p in tt.shared_parameters():
        p.requires_grad_(False)
    return net, tt, weights


def add_tasks(tt: TaskTensors, n: int, start: int = 0) -> None:
    """`n` tasks with distinct patches: a fresh head and the base's patch values perturbed."""
    for i in range(start, start + n):
        g = torch.Generator().manual_seed(i)
        init = new_head(1280, 10, g)
        with torch.no_grad():
            for name, base in tt.base_tensors().items():
                if name.startswith("head.") or not base.is_floating_point():
                    continue
                noise = torch.randn(base.shape, generator=g) * 0.05
                init[name] = base.abs() * (1 + noise) if name.endswith("running_var") else base * (1 + noise)
        tt.add_task(f"task{i}", init, trainable=False)


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def speed(args) -> None:
    net, tt, weights = build(args.size, args.kinds)
    add_tasks(tt, 8)
    tasks = tt.tasks
    per = args.batch // 8
    x = torch.rand(per * 8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    tid = torch.arange(8).repeat_interleave(per)
    stacks = stack_tasks(tt, tasks)

    def single():
        with tt.use(tasks[0]):
            return net(x)

    def mixed():
        return mixed_forward(net, tt, x, tid, stacks=stacks)

    def sequential():
        out = []
        for i, t in enumerate(tasks):
            with tt.use(t):
                out.append(net(x[tid == i]))
        return torch.cat(out)

    fns = {"single": single, "mixed": mixed, "sequential": sequential}
    with torch.inference_mode():
        diff = float((mixed() - sequential()).abs().max())
        for fn in fns.values():
            timed(fn, 2)
        best = dict.fromkeys(fns, float("inf"))
        for _ in range(args.rounds):
            for name, fn in fns.items():
                best[name] = min(best[name], timed(fn, args.steps))
    print(f"\n## mixed-task batch: {weights}, patch {args.kinds}, {args.size} px, batch {len(x)} = 8 tasks x {per}, "
          f"{torch.get_num_threads()} thread(s), min over {args.rounds} rounds of {args.steps}\n")
    print("| forward | ms per batch | vs single-task batch |\n|---|---|---|")
    for name, label in (("single", "single-task batch"), ("mixed", "mixed batch, one mixed_forward"),
                        ("sequential", "8 tasks one after another")):
        print(f"| {label} | {1000 * best[name]:.1f} | {best[name] / best['single']:.2f}x |")
    print(f"\nmax |mixed - per-task| logit difference: {diff:.3g}")


def memory(args) -> None:
    rss0 = rss_mb()
    net, tt, weights = build(args.size, args.kinds)
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)
    base_bytes = nbytes(tt.shared_named_tensors().values())
    whole = nbytes(list(net.parameters()) + list(net.buffers()))
    rss1 = rss_mb()
    add_tasks(tt, args.tasks)
    rss2 = rss_mb()
    patch_bytes = sum(nbytes(tt.tensors(t).values()) for t in tt.tasks)
    with tempfile.TemporaryDirectory() as d:
        files = sum(save_patch(tt, t, Path(d) / t) for t in tt.tasks)
        x = torch.rand(args.tasks, 1, 28, 28)
        with torch.inference_mode():
            stacks = stack_tasks(tt)
            rss3 = rss_mb()
            start = time.perf_counter()
            mixed_forward(net, tt, x, torch.arange(args.tasks), stacks=stacks)
            mixed_s = time.perf_counter() - start
    n = args.tasks
    print(f"\n## serving {n} tasks: {weights}, patch {args.kinds} (+ 10-class head), {args.size} px\n")
    print("| what | MB |\n|---|---|")
    print(f"| base tensors (shared) | {base_bytes / 2**20:.2f} |")
    print(f"| {n} patches resident (tensor bytes) | {patch_bytes / 2**20:.2f} ({patch_bytes / n / 1024:.1f} KB/task) |")
    print(f"| sum of the {n} patch artifact files (safetensors + json) | {files / 2**20:.2f} |")
    print(f"| base + {n} patches (tensor bytes) | {(base_bytes + patch_bytes) / 2**20:.2f} |")
    print(f"| RSS growth while creating the {n} tasks | {rss2 - rss1:.1f} |")
    print(f"| RSS: process with base / + {n} tasks / + stacked patches for mixed_forward | "
          f"{rss1:.0f} / {rss2:.0f} / {rss3:.0f} (python + torch alone: {rss0:.0f}) |")
    print(f"| {n} whole model copies (tensor bytes), for comparison | {n * whole / 2**20:.1f} |")
    print(f"\none mixed_forward over {n} samples of {n} different tasks: {1000 * mixed_s:.0f} ms (single call)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--kinds", default="scale-bias+depthwise+head")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    if args.batch % 8:
        ap.error("--batch must be a multiple of 8 (8 tasks)")
    torch.set_num_threads(args.threads)
    memory(args)  # first: RSS before anything else is allocated
    speed(args)


if __name__ == "__main__":
    main()
