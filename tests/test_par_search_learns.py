"""PAR's MdeNAS search prefers better operations (issue 14, task 1).

The toy: one cell of one node (2 edges per cell type) where one operation is clearly better. The
supernet's training is skipped and its held-out accuracy is injected: 0.5 + 0.2 for every edge of the
reduction cell that uses the target operation (so an architecture with the target op on both edges scores
0.9, without it 0.5). Everything else is the real search loop (`search.search`): sampling from p, counts
and last accuracies per op, the official update (with its softmax of probabilities), the lr_p step, the
genotype derivation. The official update keeps only about the last epoch's step in p (search.py's
docstring), so one search is a noisy draw: the test checks the preference over 20 seeded searches of 10
samples each against what chance gives (the target on 1 in 5 non-'none' choices, p = 1/6).
"""
from __future__ import annotations

import importlib

import pytest
import torch

from taskshare.methods.par.expert import PRIMITIVES

S = importlib.import_module("taskshare.methods.par.search")  # the module (the package exports the function)
SEEDS = 20
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of .lr_scheduler.step")


def searches(monkeypatch, target: str) -> list:
    t = PRIMITIVES.index(target)
    monkeypatch.setattr(S, "_epoch", lambda *args, **kwargs: None)
    monkeypatch.setattr(S, "_accuracy", lambda net, x, y, bs, ops, device: 0.5 + 0.2 * ops["reduce"].count(t))
    x, y = torch.zeros(8, 1, 4, 4), torch.arange(8) % 2
    return [S.search(x, y, 2, epochs=10, seed=seed, channels=2, n_cells=1, steps=1, batch_size=4)
            for seed in range(SEEDS)]


@pytest.mark.parametrize("target", ["sep_conv_3x3", "avg_pool_3x3"])
def test_search_prefers_the_better_operation(monkeypatch, target):
    t = PRIMITIVES.index(target)
    results = searches(monkeypatch, target)
    p = torch.stack([r.p["reduce"] for r in results])              # (seeds, edges, ops)
    assert not torch.allclose(p, torch.full_like(p, 1 / 6))        # p moves (it stayed uniform before 3 samples)
    # the probabilities move towards the target: above uniform by a margin, every other op below it
    assert p[:, :, t].mean() > 1 / 6 + 1e-3
    others = [o for o in range(len(PRIMITIVES)) if o != t]
    assert all(p[:, :, o].mean() < p[:, :, t].mean() - 1e-3 for o in others)
    # and the genotype picks it: the most frequent choice, on at least half the edges (chance: 1 in 5)
    picks = [op for r in results for op, _ in r.genotype.reduce]
    counts = {op: picks.count(op) for op in set(picks)}
    assert max(counts, key=counts.get) == target
    assert counts[target] >= len(picks) // 2
    # the normal cell does not exist in a 1-cell network: its accuracy carries no signal about its ops
    normal = [op for r in results for op, _ in r.genotype.normal]
    assert normal.count(target) < len(normal) // 2


def test_without_a_better_operation_nothing_is_preferred(monkeypatch):
    monkeypatch.setattr(S, "_epoch", lambda *args, **kwargs: None)
    monkeypatch.setattr(S, "_accuracy", lambda net, x, y, bs, ops, device: 0.5)
    x, y = torch.zeros(8, 1, 4, 4), torch.arange(8) % 2
    r = S.search(x, y, 2, epochs=10, seed=0, channels=2, n_cells=1, steps=1, batch_size=4)
    # equal accuracies: no op beats another, p stays uniform and the genotype is the tie default
    assert torch.allclose(r.p["reduce"], torch.full_like(r.p["reduce"], 1 / 6))
    assert r.genotype == S.derive_genotype(S.uniform(1), 1)
