"""PAR's cost of the contiguous memory format (docs/known-issues.md): search and expert training, contiguous vs
channels_last (what taskshare did before the oneDNN AVX2 crash), each in its own process, interleaved.

    .venv/bin/python perf/par_memory_format.py [--threads 1 2] [--rounds 3] [--n 1024] [--batch 128]

Prints the best time of each and the ratio channels_last / contiguous. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r'''
import sys, time, torch
import torch.nn.functional as F
import importlib
S = importlib.import_module("taskshare.methods.par.search")  # the module (the package exports the function)
from taskshare.methods.par.expert import Genotype, build_expert
what, fmt, threads, n, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
cl = fmt == "channels_last"
to = (lambda t: t.contiguous(memory_format=torch.channels_last)) if cl else (lambda t: t)
g = torch.Generator().manual_seed(0)
y = torch.arange(n) % 10
x = torch.randn(n, 3, 28, 28, generator=g) + 0.3 * y.view(-1, 1, 1, 1).float()
if what == "search":
    class Net(S.SuperNet):  # the network and every batch in the chosen format
        def to(self, *a, **k):
            m = super().to(*a, **k)
            return torch.nn.Module.to(m, memory_format=torch.channels_last) if cl else m
        def forward(self, x, ops):
            return super().forward(to(x), ops)
    S.SuperNet = Net
    S.search(x[:256], y[:256], 10, epochs=1, seed=1, batch_size=bs, lr=0.01)  # warm-up
    t = time.perf_counter()
    S.search(x, y, 10, epochs=2, seed=0, batch_size=bs, lr=0.01)
else:
    geno = Genotype(normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                            ("dil_conv_3x3", 2), ("skip_connect", 0), ("avg_pool_3x3", 1), ("sep_conv_3x3", 3)),
                    reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 0),
                            ("skip_connect", 2), ("sep_conv_3x3", 1), ("dil_conv_3x3", 3), ("max_pool_3x3", 0)))
    net = build_expert(geno, 3, 16, 4, 3, 0)
    net = net.to(memory_format=torch.channels_last) if cl else net
    head = torch.nn.Linear(net.feature_dim, 10)
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    def epoch(m):
        for s in range(0, m, bs):
            loss = F.cross_entropy(head(net.features(to(x[s:s + bs]))), y[s:s + bs])
            opt.zero_grad(); loss.backward(); opt.step()
    epoch(256)  # warm-up
    t = time.perf_counter()
    epoch(n)
print(time.perf_counter() - t)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    print(f"{'workload':<28}{'threads':>8}{'contiguous':>12}{'channels_last':>15}{'ratio':>8}")
    for what, label in (("search", "MdeNAS search, 2 epochs"), ("expert", "expert training, 1 epoch")):
        for threads in a.threads:
            best = {}
            for _ in range(a.rounds):
                for fmt in ("contiguous", "channels_last"):
                    out = subprocess.run([sys.executable, "-c", CHILD, what, fmt, str(threads), str(a.n),
                                          str(a.batch)], capture_output=True, text=True)
                    if out.returncode:
                        sys.exit(f"{what} {fmt} failed: {out.stderr.strip().splitlines()[-1]}")
                    out = out.stdout
                    best[fmt] = min(best.get(fmt, float("inf")), float(out.strip().splitlines()[-1]))
            print(f"{label:<28}{threads:>8}{best['contiguous']:>11.2f}s{best['channels_last']:>14.2f}s"
                  f"{best['contiguous'] / best['channels_last']:>7.2f}x")


if __name__ == "__main__":
    main()
