"""Inference cost per image against the evaluation batch size (issue 14: ``eval_batch_size``'s default).

    OMP_NUM_THREADS=1 .venv/bin/python perf/eval_batch.py [--threads 1] [--n 2048] [--sizes 128 256 1024]

For each taskshare backbone (the MLP and the SmallCNN on 1x28x28, the reduced ResNet-18 on 3x32x32, PAR's
cell network `par-cell` on 1x28x28), eval mode under ``torch.inference_mode``: milliseconds per image over
``--n`` random inputs in batches of each size (after one warm-up batch), and whether the outputs are
bit-identical across batch sizes (they must be: the batch size is not part of a run's identity).
"""
from __future__ import annotations

import argparse
import time

import torch

from taskshare.models.tasknet import build_backbone

MODELS = (("mlp", (1, 28, 28)), ("cnn", (1, 28, 28)), ("resnet18", (3, 32, 32)), ("par-cell", (1, 28, 28)))


def per_image_ms(net: torch.nn.Module, x: torch.Tensor, bs: int) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        net(x[:bs])
        start = time.perf_counter()
        out = torch.cat([net(x[i:i + bs]) for i in range(0, len(x), bs)])
        return (time.perf_counter() - start) / len(x) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 1024])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.n} images; ms per image by batch size")
    print(f"{'model':10s} " + " ".join(f"{b:>8d}" for b in args.sizes) + "   slowest/fastest  identical")
    for name, shape in MODELS:
        net = build_backbone(name, shape, 0).eval()
        x = torch.randn(args.n, *shape, generator=torch.Generator().manual_seed(0))
        runs = [per_image_ms(net, x, b) for b in args.sizes]
        times = [t for t, _ in runs]
        same = all(torch.equal(runs[0][1], out) for _, out in runs[1:])
        print(f"{name:10s} " + " ".join(f"{t:8.3f}" for t in times) + f"   {max(times) / min(times):14.2f}x  {same}")


if __name__ == "__main__":
    main()
