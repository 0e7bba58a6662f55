"""Sharing detection from the autograd graph, and the explicit override."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from taskshare.errors import ConfigError
from taskshare.methods.multioutput import MultiOutputNet, detect_sharing


class Head(nn.Module):
    """A head with an extra head-only parameter (a learnable output scale)."""

    def __init__(self, d: int, scaled: bool):
        super().__init__()
        self.fc = nn.Linear(d, 1)
        self.scale = nn.Parameter(torch.ones(1)) if scaled else None

    def forward(self, z):
        out = self.fc(z)
        return out * self.scale if self.scale is not None else out


def _net():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    net = MultiOutputNet(enc, {"a": Head(4, scaled=True), "b": Head(4, scaled=False)})
    net.unused = nn.Parameter(torch.zeros(2))  # reached by no task
    return net


def _losses(net, x):
    out = net(x)
    return {"a": out["a"].pow(2).mean(), "b": out["b"].abs().mean()}


def test_detects_shared_head_only_and_unused():
    net = _net()
    s = detect_sharing(net, _losses(net, torch.randn(5, 3)))
    assert s.tasks == ("a", "b")
    assert s.shared == ("encoder.0.weight", "encoder.0.bias")
    # names in model.named_parameters() order
    assert s.task_specific == {"a": ("heads.a.scale", "heads.a.fc.weight", "heads.a.fc.bias"),
                               "b": ("heads.b.fc.weight", "heads.b.fc.bias")}
    assert s.unused == ("unused",)
    assert s.reach == {"encoder.0.weight": ("a", "b"), "encoder.0.bias": ("a", "b")}
    assert s.reach_matrix() == [[True, True], [True, True]]
    assert [p is q for p, q in zip(s.shared_params(net), net.encoder.parameters())] == [True, True]
    assert s.task_params(net, "a")[0] is net.heads["a"].scale
    assert len(s.task_params(net)) == 5


def test_dead_relu_still_counts_as_reached():
    net = _net()
    with torch.no_grad():
        net.encoder[0].bias.fill_(-100.0)  # every activation dead: zero gradients, still reached
    s = detect_sharing(net, _losses(net, torch.randn(5, 3)))
    assert s.shared == ("encoder.0.weight", "encoder.0.bias")


def test_override_moves_parameters():
    net = _net()
    losses = _losses(net, torch.randn(5, 3))
    s = detect_sharing(net, losses, shared=["heads.a.scale"], task_specific={"b": ["encoder.0.bias"]})
    assert s.shared == ("encoder.0.weight", "heads.a.scale")
    assert s.task_specific["b"] == ("encoder.0.bias", "heads.b.fc.weight", "heads.b.fc.bias")
    assert s.reach["heads.a.scale"] == ("a",)
    assert s.reach_matrix() == [[True, True], [True, False]]


def test_override_without_losses_and_errors():
    net = _net()
    s = detect_sharing(net, shared=["encoder.0.weight", "encoder.0.bias", "unused"],
                       task_specific={"a": ["heads.a.fc.weight", "heads.a.fc.bias", "heads.a.scale"],
                                      "b": ["heads.b.fc.weight", "heads.b.fc.bias"]})
    assert s.tasks == ("a", "b") and s.shared == ("unused", "encoder.0.weight", "encoder.0.bias")
    with pytest.raises(ConfigError, match="unassigned"):
        detect_sharing(net, shared=["encoder.0.weight"], task_specific={"a": ["heads.a.scale"]})
    losses = _losses(net, torch.randn(5, 3))
    with pytest.raises(ConfigError, match="unknown parameter 'nope'"):
        detect_sharing(net, losses, shared=["nope"])
    with pytest.raises(ConfigError, match="listed twice"):
        detect_sharing(net, losses, shared=["unused"], task_specific={"a": ["unused"]})
    with pytest.raises(ConfigError, match="unknown task 'c'"):
        detect_sharing(net, losses, task_specific={"c": ["unused"]})
