"""PAR's architecture search: MdeNAS sampling over the cell space of `expert.py` (as in the official code).

MdeNAS (Zheng et al., ICCV 2019, "Multinomial Distribution Learning for Effective Neural Architecture
Search") as PAR's official code runs it (WenjinW/PAR@5539e08, ``src/automl/mdenas_search.py``):

- **Supernet**: the expert layout with stem multiplier 1 and non-affine BN (pooling ops followed by a
  non-affine BN); every edge holds all 6 ops, of which one runs per step. Each cell type (normal, reduce)
  has its own probability matrix p of shape (edges, ops), initially uniform (1/6). Edges per cell:
  sum_{i<steps} (2 + i) = 14 for 4 nodes.
- **One sample per epoch**, for ``epochs`` epochs, on a fixed random 50/50 split of the training set:
  1. draw one op per edge and cell type from p;
  2. train the shared supernet weights for one epoch on the first half (SGD, momentum 0.9, the run's lr
     and weight decay, cosine to 1e-5 over the search, gradient clipping at 5);
  3. measure the accuracy a on the second half;
  4. for each sampled op: count[o] += 1 and acc[o] = a (the last accuracy).
- **Update**, per edge k and op o (eq. of MdeNAS; ``update`` below):

      p_k[o] += lr_p · ( #{o': count[o] < count[o'] and acc[o] > acc[o']}
                       - #{o': count[o] > count[o'] and acc[o] < acc[o']} ),     lr_p = 0.01
      p_k <- softmax(p_k)

  The softmax is applied to probabilities (not logits), as in the official code; it flattens p.
- **Genotype** (`derive_genotype`): for each node, the 2 incoming edges with the highest best non-'none'
  probability, each with its arg-max non-'none' op. Ties are broken towards the lower op / edge index, so
  the result is deterministic; 'none' is never chosen. The final expert is then trained from scratch.

**How much the official update learns.** The softmax of probabilities contracts every deviation from
uniform about 6-fold per epoch (p_i = 1/6 + e_i gives softmax(p)_i ~ 1/6 + e_i/6), so p holds little more
than the last epoch's step (at most lr_p·5/6 ~ 0.008 above 1/6), and an op stops gaining once it is the
most sampled on its edge. Measured with the supernet's training replaced by a held-out accuracy that
depends only on the sampled ops (tests/test_par_search_learns.py): the better op is preferred clearly
but not reliably: on one cell of one node (2 edges), 10 samples, 20 seeds, the target was picked on
25-27 of 40 edges (chance 8) and p rose 0.002-0.004 above 1/6; on 2 cells of 4 nodes after 30 samples,
on 4-7 of 16 edges per search (chance about 3). On real data the signal is weaker still (a shared accuracy per sample, supernet weights that train
as the search goes). This is the official code's behaviour and is kept.

**Small budgets.** p moves only once some op on an edge has been sampled more often than another with a
lower accuracy, i.e. from the 2nd epoch on, and the softmax-of-probabilities keeps it close to uniform.
With very few epochs the genotype is therefore decided by ties (the first non-'none' op, max_pool_3x3, on
the first inputs), a conv-free cell; the official code does the same. Use >= 10 epochs (official: 50-100).

Every random draw (data split, batch order, op samples, supernet initialisation) comes from a generator
seeded by the caller (PAR passes ``task_seed(seed, task index, ...)``), so a search is reproducible.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from taskshare import progress
from taskshare.methods.par.expert import (CELL_TYPES, PRIMITIVES, FactorizedReduce, Genotype, ReLUConvBN, make_op,
                                          reduction_cells)

LR_MIN = 1e-5
SEARCH_CLIP = 5.0
MIN_AUTO_EPOCHS = 10     # search_epochs=-1: at least this many samples (p first moves at the 3rd)
MIN_AUTO_SAMPLES = 128   # ... on at least this many training samples (or all of them)


def n_edges(steps: int) -> int:
    return sum(2 + i for i in range(steps))


# ---------------------------------------------------------------------------------------------- supernet
class MixedOp(nn.Module):
    def __init__(self, c: int, stride: int):
        super().__init__()
        ops = []
        for name in PRIMITIVES:
            op = make_op(name, c, stride, affine=False)
            ops.append(nn.Sequential(op, nn.BatchNorm2d(c, affine=False)) if "pool" in name else op)
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, op: int) -> torch.Tensor:
        return self.ops[op](x)


class SuperCell(nn.Module):
    def __init__(self, steps: int, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.preprocess0 = (FactorizedReduce(c_pp, c, False) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, False))
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, False)
        self.edges = nn.ModuleList(MixedOp(c, 2 if reduction and j < 2 else 1)
                                   for i in range(steps) for j in range(2 + i))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, ops: list[int]) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        k = 0
        for _ in range(self.steps):
            node = 0
            for j, h in enumerate(states):
                node = node + self.edges[k + j](h, ops[k + j])
            k += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)


class SuperNet(nn.Module):
    """The search network: every edge holds all ops; `forward(x, ops)` runs one sampled op per edge."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, n_cells: int, steps: int):
        super().__init__()
        self.steps = steps
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))  # stem multiplier 1, as the official supernet
        c_pp, c_p, reduction_prev = channels, channels, False
        cells = []
        for i in range(n_cells):
            reduction = i in reduction_cells(n_cells)
            cells.append(SuperCell(steps, c_pp, c_p, channels, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, steps * channels, reduction
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor, ops: dict[str, list[int]]) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, ops["reduce" if cell.reduction else "normal"])
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


# ----------------------------------------------------------------------------------------------- budget
def search_budget(search_epochs: int, search_limit: int, run_epochs: int, n: int) -> tuple[int, int]:
    """(search epochs, cap on the search's training samples; 0: all) for a task of `n` training samples.

    An explicit ``search_epochs`` >= 0 is used as given (with ``search_limit``). ``-1`` ties the search to
    the run's budget: as many MdeNAS samples as the run has epochs (the official ratio: ``sample_epochs`` =
    ``epochs`` = 100 in the CIFAR scripts), at least `MIN_AUTO_EPOCHS`, on at most ``run_epochs * n /
    epochs`` samples (at least `MIN_AUTO_SAMPLES`), so that the whole search passes over about as many
    samples as the task's training (one half trained on, one half evaluated, on the narrower supernet;
    measured on domain-stream at 1 epoch: 8-16 s per search against 15-20 s of training per task). A run of 1 epoch on 2000 samples searches 10 samples on 200; a
    run of >= 10 epochs searches one sample per epoch on the whole training set. An explicit
    ``search_limit`` > 0 caps further.
    """
    if search_epochs >= 0:
        return search_epochs, search_limit
    epochs = max(run_epochs, MIN_AUTO_EPOCHS)
    limit = max(run_epochs * n // epochs, MIN_AUTO_SAMPLES)
    if search_limit:
        limit = min(limit, search_limit)
    return epochs, (0 if limit >= n else limit)


# ------------------------------------------------------------------------------------------ MdeNAS rules
def delta(counts: torch.Tensor, accs: torch.Tensor) -> torch.Tensor:
    """MdeNAS's step direction per edge and op (shape (edges, ops)): +1 for every other op an op beats with
    fewer samples, -1 for every op that beats it with fewer samples."""
    fewer = counts.unsqueeze(2) < counts.unsqueeze(1)   # [k, o, o']: count[o] < count[o']
    more = counts.unsqueeze(2) > counts.unsqueeze(1)
    better = accs.unsqueeze(2) > accs.unsqueeze(1)      # acc[o] > acc[o']
    worse = accs.unsqueeze(2) < accs.unsqueeze(1)
    return (fewer & better).sum(2) - (more & worse).sum(2)


def update(p: torch.Tensor, counts: torch.Tensor, accs: torch.Tensor, lr: float = 0.01) -> torch.Tensor:
    """The official MdeNAS update for every edge at once: p, counts, accs of shape (edges, ops) -> new p:
    p + lr·`delta`, then each row goes through a softmax (of probabilities: see the module docstring)."""
    return F.softmax(p + lr * delta(counts, accs).to(p.dtype), dim=1)


def derive_genotype(p: dict[str, torch.Tensor], steps: int) -> Genotype:
    """Per node, the 2 edges with the highest best non-'none' probability and their arg-max non-'none' op.

    Ties go to the lower op index and the lower edge index (deterministic); 'none' (column 0) is excluded.
    """
    cells = {}
    for kind in CELL_TYPES:
        probs = p[kind][:, 1:].double()
        best = probs.max(1).values
        op = (probs == best.unsqueeze(1)).to(torch.int8).argmax(1) + 1  # first maximal op
        best, op = best.tolist(), op.tolist()
        edges, start = [], 0
        for i in range(steps):
            n_in = 2 + i
            chosen = sorted(range(n_in), key=lambda j: (-best[start + j], j))[:2]
            edges += [(PRIMITIVES[op[start + j]], j) for j in chosen]
            start += n_in
        cells[kind] = tuple(edges)
    return Genotype(**cells)


def uniform(steps: int) -> dict[str, torch.Tensor]:
    return {kind: torch.full((n_edges(steps), len(PRIMITIVES)), 1.0 / len(PRIMITIVES)) for kind in CELL_TYPES}


# ----------------------------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    genotype: Genotype
    seconds: float
    epochs: int
    accuracies: list[float] = field(default_factory=list)  # held-out accuracy of each epoch's sample
    p: dict[str, torch.Tensor] = field(default_factory=dict)


def _epoch(net, x, y, batch_size, gen, ops, opt, device, bar) -> None:
    net.train()
    order = torch.randperm(len(y), generator=gen)
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx].to(device)
        loss = F.cross_entropy(net(xb, ops), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([q for q in net.parameters() if q.grad is not None], SEARCH_CLIP)
        opt.step()
        bar.update(1)


@torch.no_grad()
def _accuracy(net, x, y, batch_size, ops, device) -> float:
    net.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = net(x[start:start + batch_size].to(device), ops)
        correct += int((logits.argmax(1).cpu() == y[start:start + batch_size]).sum())
    return correct / max(len(y), 1)


def search(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int, seed: int, channels: int = 16,
           n_cells: int = 4, steps: int = 4, batch_size: int = 64, lr: float = 0.01, momentum: float = 0.9,
           weight_decay: float = 0.0, lr_p: float = 0.01, split: float = 0.5,
           device: torch.device | str = "cpu", desc: str = "PAR search") -> SearchResult:
    """MdeNAS search on the (already transformed) training set `x`, `y`; returns the derived genotype.

    ``epochs`` = 0 returns the genotype of the uniform distribution without training (no search). A progress
    bar (`desc`, one step per supernet training batch) shows the sample (epoch) and the last held-out
    accuracy; one line (`progress.say`) sums the search up. Both are silent when progress is quiet.
    """
    start_time = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    p = uniform(steps)
    n = len(y)
    order = torch.randperm(n, generator=gen)
    cut = int(math.floor(split * n))
    x_tr, y_tr, x_va, y_va = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    accs_seen: list[float] = []
    if epochs > 0 and cut > 0 and cut < n:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SuperNet(x.shape[1], channels, num_classes, n_cells, steps)
        net = net.to(device)  # contiguous format: channels_last crashes oneDNN on AVX2 (docs/known-issues.md)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=LR_MIN)
        counts = {k: torch.zeros_like(p[k], dtype=torch.long) for k in CELL_TYPES}
        accs = {k: torch.zeros_like(p[k]) for k in CELL_TYPES}
        rows = torch.arange(n_edges(steps))
        with progress.bar(epochs * -(-cut // batch_size), desc) as bar:
            for epoch in range(epochs):
                picked = {k: torch.multinomial(p[k], 1, generator=gen).flatten() for k in CELL_TYPES}
                ops = {k: v.tolist() for k, v in picked.items()}
                _epoch(net, x_tr, y_tr, batch_size, gen, ops, opt, device, bar)
                a = _accuracy(net, x_va, y_va, max(batch_size, 256), ops, device)
                accs_seen.append(a)
                for k in CELL_TYPES:
                    counts[k][rows, picked[k]] += 1
                    accs[k][rows, picked[k]] = a
                    p[k] = update(p[k], counts[k], accs[k], lr_p)
                sched.step()
                bar.set_postfix_str(f"sample {epoch + 1}/{epochs}, held-out acc {a:.3f}")
    seconds = time.perf_counter() - start_time
    if accs_seen:
        progress.say(f"{desc}: {len(accs_seen)} samples on {cut}+{n - cut} images in {seconds:.1f} s, "
                     f"held-out acc {min(accs_seen):.3f}-{max(accs_seen):.3f}")
    return SearchResult(derive_genotype(p, steps), seconds, len(accs_seen), accs_seen, p)
