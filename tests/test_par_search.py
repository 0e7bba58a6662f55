"""PAR's MdeNAS search and cell experts (spec §4, §10.6)."""
from __future__ import annotations

import math

import pytest
import torch

from taskshare.errors import ConfigError
from taskshare.methods.par.expert import PRIMITIVES, Genotype, build_expert
from taskshare.methods.par.search import derive_genotype, n_edges, search, uniform, update


def test_mdenas_update_hand_computed_3_ops():
    p = torch.tensor([[0.2, 0.5, 0.3]])
    counts = torch.tensor([[3, 1, 2]])
    accs = torch.tensor([[0.5, 0.8, 0.6]])
    # op0 (3 samples, 0.5): beats nobody with fewer samples, loses to op1 and op2 (fewer samples, better): -2
    # op1 (1 sample, 0.8): beats op0 and op2 with fewer samples: +2;  op2 (2, 0.6): beats op0, loses to op1: 0
    raw = [0.2 - 0.02, 0.5 + 0.02, 0.3]
    z = sum(math.exp(v) for v in raw)
    expected = torch.tensor([[math.exp(v) / z for v in raw]])
    assert torch.allclose(update(p, counts, accs, lr=0.01), expected, atol=1e-7)
    # equal counts or equal accuracies: no change before the softmax
    flat = update(p, torch.tensor([[2, 2, 2]]), accs, lr=0.01)
    assert torch.allclose(flat, torch.softmax(p, 1))


def test_genotype_is_deterministic_and_never_none():
    p = uniform(3)
    p["normal"][:, 0] = 0.9  # 'none' most probable everywhere: never chosen
    g1, g2 = derive_genotype(p, 3), derive_genotype(p, 3)
    assert g1 == g2
    assert all(op != "none" for op, _ in g1.normal + g1.reduce)
    # ties: the first non-'none' op and the two lowest-indexed inputs
    assert g1.normal == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 3
    # a clear choice: node 1 (edges 2, 3, 4) prefers input 2 with sep_conv, then input 0 with dil_conv
    q = uniform(2)
    q["reduce"][2] = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    q["reduce"][3] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.4])
    q["reduce"][4] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.6, 0.0])
    g = derive_genotype(q, 2)
    assert g.reduce[2:] == (("sep_conv_3x3", 2), ("dil_conv_3x3", 1))
    assert n_edges(4) == 14 and len(PRIMITIVES) == 6


def test_search_is_reproducible_and_records_time():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.randn(40, 1, 6, 6, generator=gen) + y.view(-1, 1, 1, 1).float()
    kw = dict(epochs=3, seed=5, channels=4, n_cells=2, steps=2, batch_size=10, lr=0.05)
    a, b = search(x, y, 2, **kw), search(x, y, 2, **kw)
    assert a.genotype == b.genotype and a.accuracies == b.accuracies and len(a.accuracies) == 3
    assert a.seconds > 0 and all(torch.allclose(a.p[k], b.p[k]) for k in a.p)
    assert all(torch.allclose(a.p[k].sum(1), torch.ones(n_edges(2))) for k in a.p)
    assert search(x, y, 2, **{**kw, "epochs": 0}).genotype == derive_genotype(uniform(2), 2)


def test_expert_from_genotype():
    g = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("avg_pool_3x3", 0)),
                 reduce=(("skip_connect", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 2), ("skip_connect", 1)))
    assert Genotype.from_dict(g.to_dict()) == g
    net = build_expert(g, 3, channels=4, n_cells=4, stem_multiplier=3, seed=0)
    same = build_expert(g, 3, channels=4, n_cells=4, stem_multiplier=3, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), same.state_dict().values()))
    assert net.feature_dim == 8
    for size in (28, 8, 7):  # odd sizes reduce consistently
        assert net.features(torch.randn(2, 3, size, size)).shape == (2, 8)
    with pytest.raises(ConfigError, match="not a usable operation"):
        Genotype(normal=(("none", 0), ("skip_connect", 1)), reduce=(("skip_connect", 0), ("skip_connect", 1)))
    with pytest.raises(ConfigError, match="does not exist"):
        Genotype(normal=(("skip_connect", 2), ("skip_connect", 1)), reduce=(("skip_connect", 0), ("skip_connect", 1)))
