"""Loss weighting: UW formula, DWA weights from loss histories, GradNorm's weight gradient and update."""
from __future__ import annotations

import math

import pytest
import torch

from taskshare.errors import ConfigError
from taskshare.methods.multioutput.weighting import DWA, GradNorm, UncertaintyWeighting, dwa_weights, gradnorm_weight_grad


def T(x):
    return torch.tensor(x, dtype=torch.float64)


def test_uncertainty_weighting_formula_and_optimum():
    uw = UncertaintyWeighting(2, ["regression", "classification"]).double()
    with torch.no_grad():
        uw.log_vars.copy_(T([0.5, -1.0]))
    L = T([2.0, 3.0])
    # regression: 1/(2 sigma^2) L + log sigma = 0.5 e^-s L + 0.5 s; classification: e^-s L + 0.5 s
    expected = 0.5 * math.exp(-0.5) * 2 + 0.25 + math.exp(1.0) * 3 - 0.5
    assert float(uw(L).detach()) == pytest.approx(expected, rel=1e-14)
    torch.testing.assert_close(uw.weights(), T([0.5 * math.exp(-0.5), math.exp(1.0)]))
    # d/ds is zero at sigma^2 = L (regression) and sigma^2 = 2L (classification)
    with torch.no_grad():
        uw.log_vars.copy_(T([math.log(2.0), math.log(6.0)]))
    uw(L).backward()
    torch.testing.assert_close(uw.log_vars.grad, T([0.0, 0.0]), atol=1e-15, rtol=0)
    with pytest.raises(ConfigError, match="kinds"):
        UncertaintyWeighting(2, ["regression"])
    with pytest.raises(ConfigError, match="2 task losses"):
        uw(T([1.0, 2.0, 3.0]))


def test_dwa_weights_from_histories():
    # r = L(t-1) / L(t-2) = (0.5, 1); w = 2 softmax(r / 2)
    w = dwa_weights(T([1.0, 4.0]), T([2.0, 4.0]), T=2.0)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    torch.testing.assert_close(w, T([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]))
    assert float(w.sum()) == pytest.approx(2.0)

    dwa = DWA(3)
    torch.testing.assert_close(dwa.weights(), T([1.0, 1.0, 1.0]))  # epochs 1 and 2
    dwa.end_epoch([3.0, 2.0, 1.0])
    torch.testing.assert_close(dwa.weights(), T([1.0, 1.0, 1.0]))
    for losses in ([2.0, 2.0, 3.0], [4.0, 2.0, 2.0]):  # epoch average of observed losses: (3, 2, 2.5)
        dwa.observe(T(losses))
    dwa.end_epoch()
    r = T([1.0, 1.0, 2.5])
    torch.testing.assert_close(dwa.weights(), 3 * torch.softmax(r / 2, 0))
    state = dwa.state_dict()
    other = DWA(3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.weights(), dwa.weights())
    with pytest.raises(ConfigError, match="observe"):
        DWA(2).end_epoch()


def test_gradnorm_weight_gradient_known_answer():
    # G = w n = (2, 1), G_bar = 1.5, equal training rates: target 1.5 each -> sign(G - target) n = (2, -1)
    g = gradnorm_weight_grad(T([1.0, 1.0]), T([2.0, 1.0]), T([1.0, 1.0]), 1.5)
    torch.testing.assert_close(g, T([2.0, -1.0]))
    # task 2 trains slower (ratio 2 vs 1): r = (2/3, 4/3), targets G_bar r^alpha
    w, n, ratio, alpha = T([1.0, 1.0]), T([1.0, 1.0]), T([1.0, 2.0]), 1.5
    target = 1.0 * (T([2 / 3, 4 / 3]) ** alpha)
    torch.testing.assert_close(gradnorm_weight_grad(w, n, ratio, alpha), torch.sign(w * n - target) * n)


def test_gradnorm_update_renormalises():
    gn = GradNorm(2, alpha=1.5, lr=0.1, optimizer="sgd")
    used = gn.update(T([5.0, 7.0]), T([2.0, 1.0]))
    torch.testing.assert_close(used, T([1.0, 1.0]))  # this step uses w(t)
    torch.testing.assert_close(gn.initial, T([5.0, 7.0]))  # L(0) recorded on the first call
    # SGD: w = (1 - 0.1 * 2, 1 + 0.1 * 1) = (0.8, 1.1), renormalised to sum to K = 2
    torch.testing.assert_close(gn.w.detach(), T([0.8, 1.1]) * 2 / 1.9)
    state = gn.state_dict()
    gn2 = GradNorm(2, optimizer="sgd", lr=0.1)
    gn2.load_state_dict(state)
    torch.testing.assert_close(gn2.update(T([4.0, 7.0]), T([1.0, 1.0])), gn.update(T([4.0, 7.0]), T([1.0, 1.0])))
    with pytest.raises(ConfigError, match="optimizer"):
        GradNorm(2, optimizer="lbfgs")
