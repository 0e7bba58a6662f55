"""Per-task gradients: loop == batched == a hand loop of backward passes; layout helpers; mode choice."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from taskshare.errors import ConfigError
from taskshare.methods.multioutput.gradients import (
    FlatLayout, choose_mode, flatten, graph_has_conv_or_bn, per_task_gradients, reach_mask, write_grads,
)


def _model():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    side = nn.Linear(4, 3).double()  # reached by task "b" only
    ha, hb = nn.Linear(3, 1).double(), nn.Linear(3, 2).double()
    return enc, side, ha, hb


def _losses(enc, side, ha, hb, x):
    z = enc(x)
    la = ha(z).pow(2).mean()
    lb = (hb(z + side(x)) - 1).pow(2).mean()
    return [la, lb]


def _hand(enc, side, ha, hb, x, params):
    rows = []
    for k in range(2):
        for p in params:
            p.grad = None
        _losses(enc, side, ha, hb, x)[k].backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                               for p in params]))
    return torch.stack(rows)


def test_loop_equals_batched_equals_hand_loop():
    enc, side, ha, hb = _model()
    x = torch.randn(7, 4, dtype=torch.float64)
    params = list(enc.parameters()) + list(side.parameters())
    hand = _hand(enc, side, ha, hb, x, params)
    loop = per_task_gradients(_losses(enc, side, ha, hb, x), params, "loop")
    batched = per_task_gradients(_losses(enc, side, ha, hb, x), params, "batched")
    assert loop.shape == (2, FlatLayout.of(params).total) and loop.dtype == torch.float64
    torch.testing.assert_close(loop, hand, rtol=0, atol=1e-14)
    torch.testing.assert_close(batched, hand, rtol=0, atol=1e-14)
    # task "a" does not reach `side`: its row is zero there, task "b"'s is not
    n_enc = sum(p.numel() for p in enc.parameters())
    assert loop[0, n_enc:].abs().max() == 0 and loop[1, n_enc:].abs().max() > 0


def test_retain_graph_and_reused_out_buffer():
    enc, side, ha, hb = _model()
    x = torch.randn(5, 4, dtype=torch.float64)
    params = list(enc.parameters())
    losses = _losses(enc, side, ha, hb, x)
    out = torch.full((2, FlatLayout.of(params).total), 7.0, dtype=torch.float64)
    G = per_task_gradients(losses, params, "batched", retain_graph=True, out=out)
    assert G is out
    torch.stack(losses).sum().backward()  # the graph is still there
    torch.testing.assert_close(G.sum(0), torch.cat([p.grad.reshape(-1) for p in params]))
    with pytest.raises(ConfigError, match="shape"):
        per_task_gradients(_losses(enc, side, ha, hb, x), params, out=torch.zeros(3, 2, dtype=torch.float64))


def test_loss_without_grad_gives_zero_row():
    enc, side, ha, hb = _model()
    x = torch.randn(5, 4, dtype=torch.float64)
    la, lb = _losses(enc, side, ha, hb, x)
    for mode in ("loop", "batched"):
        G = per_task_gradients([la, torch.tensor(3.0, dtype=torch.float64), lb], list(enc.parameters()), mode,
                               retain_graph=True)
        assert G[1].abs().max() == 0 and G[0].abs().max() > 0 and G[2].abs().max() > 0


def test_auto_mode_choice():
    mlp = nn.Sequential(nn.Linear(3, 3))
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    # CPU: always the loop (measured faster here); other devices: batched only without conv / BN
    assert choose_mode(mlp) == choose_mode(cnn) == choose_mode(bn) == "loop"
    assert choose_mode(mlp, "cuda") == "batched"
    assert choose_mode(cnn, "cuda") == "loop" and choose_mode(bn, "meta") == "loop"
    x = torch.randn(2, 1, 5, 5)
    assert graph_has_conv_or_bn([cnn(x).sum()]) and not graph_has_conv_or_bn([mlp(torch.randn(2, 3)).sum()])
    assert graph_has_conv_or_bn([bn(torch.randn(4, 3)).sum()])
    # auto on a conv graph gives the same gradients
    losses = [cnn(x)[:, :4].sum(), cnn(x)[:, 4:].pow(2).sum()]
    torch.testing.assert_close(per_task_gradients(losses, list(cnn.parameters()), "auto", retain_graph=True),
                               per_task_gradients(losses, list(cnn.parameters()), "batched"))


def test_layout_flatten_write_grads_and_reach_mask():
    enc, side, ha, hb = _model()
    params = list(enc.parameters())
    lay = FlatLayout.of(params)
    assert lay.offsets == (0, 20, 25, 40) and lay.total == 43
    flat = torch.arange(43, dtype=torch.float64)
    views = lay.views(flat)
    assert [v.shape for v in views] == [p.shape for p in params]
    torch.testing.assert_close(flatten(views, lay), flat)
    two = flatten([None, torch.ones(2, 5, dtype=torch.float64), None, None],
                  lay, out=torch.full((2, 43), 9.0, dtype=torch.float64))
    assert two[:, 20:25].eq(1).all() and two[:, :20].eq(0).all() and two[:, 25:].eq(0).all()
    write_grads(params, flat, lay)
    torch.testing.assert_close(params[1].grad, flat[20:25])
    write_grads(params, flat, lay, accumulate=True)
    torch.testing.assert_close(params[1].grad, 2 * flat[20:25])
    with pytest.raises(ConfigError, match="columns"):
        lay.views(torch.zeros(5))
    x = torch.randn(3, 4, dtype=torch.float64)
    mask = reach_mask(_losses(enc, side, ha, hb, x), params + list(side.parameters()) + list(ha.parameters()))
    assert mask.tolist() == [[True] * 4 + [False, False, True, True], [True] * 6 + [False, False]]


def test_bad_inputs():
    p = nn.Parameter(torch.ones(2))
    with pytest.raises(ConfigError, match="mode"):
        per_task_gradients([p.sum()], [p], "vmap")
    with pytest.raises(ConfigError, match="at least one"):
        per_task_gradients([], [p])
    with pytest.raises(ConfigError, match="scalar"):
        per_task_gradients([p * 2], [p])
    q = nn.Parameter(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ConfigError, match="one dtype"):
        per_task_gradients([p.sum() + q.sum().float()], [p, q])
