"""EWC's diagonal Fisher: the closed form (Linear, Conv2d, eval BatchNorm) and the vmap path both equal a
plain per-sample loop, for the empirical and the true Fisher (labels drawn from the model)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taskshare.methods.lifelong import ewc
from taskshare.methods.lifelong.ewc import diagonal_fisher
from taskshare.models import TaskNet
from taskshare.models.backbones import MLP, SmallCNN


def _net(kind: str):
    torch.manual_seed(0)
    if kind == "mlp":
        backbone, shape = MLP((1, 6, 6), hidden=(16, 12)), (1, 6, 6)
    elif kind == "cnn":
        backbone, shape = SmallCNN((1, 8, 8), widths=(4, 4, 6, 6), out_dim=10), (1, 8, 8)
        for m in backbone.modules():  # non-trivial running statistics (eval mode uses them)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_()
    else:  # a layer without a closed form (grouped conv): the vmap path
        backbone = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
        backbone.out_dim, shape = 5, (2, 6, 6)
    head = {"head.weight": torch.randn(3, backbone.out_dim), "head.bias": torch.randn(3)}
    x, y = torch.randn(11, *shape), torch.randint(0, 3, (11,))
    return TaskNet(backbone), head, x, y


def _reference(net, params, head, x, y, mode, gen, chunk):
    """A per-sample loop in float64 (labels drawn as diagonal_fisher draws them: `chunk` rows per draw)."""
    net.eval()
    if mode == "true":
        with torch.no_grad():
            probs = F.softmax(F.linear(net.backbone(x), head["head.weight"], head["head.bias"]), 1)
        y = torch.cat([torch.multinomial(probs[s:s + chunk], 1, generator=gen).squeeze(1)
                       for s in range(0, len(x), chunk)])
    expected = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for i in range(len(x)):
        logp = F.log_softmax(F.linear(net.backbone(x[i:i + 1]), head["head.weight"], head["head.bias"]), 1)[0, y[i]]
        for n, g in zip(params, torch.autograd.grad(logp, list(params.values()))):
            expected[n] += g.double().pow(2) / len(x)
    return expected


@pytest.mark.parametrize("kind", ["mlp", "cnn", "grouped"])
@pytest.mark.parametrize("mode", ["empirical", "true"])
@pytest.mark.parametrize("fast", [True, False])
def test_fisher_equals_per_sample_loop(kind, mode, fast, monkeypatch):
    net, head, x, y = _net(kind)
    params = {f"backbone.{n}": p for n, p in net.backbone.named_parameters()}
    calls = []
    vmap_path = ewc._vmap_fisher
    monkeypatch.setattr(ewc, "_vmap_fisher", lambda *a: calls.append(1) or vmap_path(*a))
    got = diagonal_fisher(net, params, head, x, y, mode, torch.Generator().manual_seed(5), chunk=4, fast=fast)
    assert bool(calls) == (not fast or kind == "grouped")  # the closed form applies to the MLP and the CNN
    assert net.training  # the mode is restored
    expected = _reference(net, params, head, x, y, mode, torch.Generator().manual_seed(5), chunk=4)
    for n in params:
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n].double(), expected[n], rtol=1e-6, atol=1e-6)


def test_closed_form_falls_back_for_a_layer_called_twice():
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        out_dim = 4

        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    net, head = TaskNet(Twice()), {"head.weight": torch.randn(2, 4), "head.bias": torch.randn(2)}
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    params = {f"backbone.{n}": p for n, p in net.backbone.named_parameters()}
    got = diagonal_fisher(net, params, head, x, y, "true", torch.Generator().manual_seed(1))
    expected = _reference(net, params, head, x, y, "true", torch.Generator().manual_seed(1), 64)
    for n in params:
        torch.testing.assert_close(got[n].double(), expected[n], rtol=1e-6, atol=1e-6)
