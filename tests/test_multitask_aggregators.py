"""Gradient-combining functions on hand-made K x D matrices with known answers (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taskshare.errors import ConfigError
from taskshare.methods.multioutput.aggregators import (
    AGGREGATORS, cagrad, cagrad_weights, ew, mean, mgda, mgda_ub_weights, mgda_weights, min_norm_2, pcgrad,
    pcgrad_project,
)


def T(rows):
    return torch.tensor(rows, dtype=torch.float64)


ORTHO = T([[1.0, 0.0], [0.0, 1.0]])
CONFLICT = T([[1.0, 0.0], [-1.0, 1.0]])


def test_ew_and_mean():
    torch.testing.assert_close(ew(CONFLICT), T([0.0, 1.0]))
    torch.testing.assert_close(mean(CONFLICT), T([0.0, 0.5]))
    assert set(AGGREGATORS) == {"ew", "mean", "pcgrad", "mgda", "cagrad"}
    with pytest.raises(ConfigError, match="K x D"):
        ew(torch.zeros(3))


def test_pcgrad_hand_examples():
    # orthogonal: nothing to project
    torch.testing.assert_close(pcgrad_project(ORTHO), ORTHO)
    torch.testing.assert_close(pcgrad(ORTHO), T([1.0, 1.0]))
    # g1.g2 = -1: g1 - (-1/2) g2 = (0.5, 0.5); g2 - (-1/1) g1 = (0, 1)
    P = pcgrad_project(CONFLICT)
    torch.testing.assert_close(P, T([[0.5, 0.5], [0.0, 1.0]]))
    torch.testing.assert_close(pcgrad(CONFLICT), T([0.5, 1.5]))
    assert abs(float(P[0] @ CONFLICT[1])) < 1e-15 and abs(float(P[1] @ CONFLICT[0])) < 1e-15
    # a zero gradient never conflicts
    torch.testing.assert_close(pcgrad_project(T([[1.0, 2.0], [0.0, 0.0]])), T([[1.0, 2.0], [0.0, 0.0]]))


def test_pcgrad_random_order_follows_generator():
    G = T([[1.0, 0.0, 0.5], [-1.0, 1.0, 0.0], [0.2, -1.0, -1.0]])
    expected = G.clone()
    gen = torch.Generator().manual_seed(3)
    for i in range(3):  # the paper's loop, projecting against the original g_j
        for j in torch.randperm(3, generator=gen).tolist():
            if j != i and float(expected[i] @ G[j]) < 0:
                expected[i] -= float(expected[i] @ G[j]) / float(G[j] @ G[j]) * G[j]
    got = pcgrad_project(G, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    # with K = 3 the order matters: some seed gives a different result
    outs = {tuple(pcgrad(G, torch.Generator().manual_seed(s)).tolist()) for s in range(10)}
    assert len(outs) > 1


def test_mgda_two_tasks_closed_form():
    assert min_norm_2(1.0, 0.0, 1.0) == 0.5 and min_norm_2(1.0, 1.0, 1.0) == 0.5
    torch.testing.assert_close(mgda(ORTHO), T([0.5, 0.5]))
    # g1 = (2, 0), g2 = (0, 1): a1 = (g2 - g1).g2 / |g1 - g2|^2 = 1/5, d = (0.4, 0.8), d.g1 = d.g2 = |d|^2
    G = T([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(mgda_weights(G), T([0.2, 0.8]))
    d = mgda(G)
    torch.testing.assert_close(d, T([0.4, 0.8]))
    torch.testing.assert_close(G @ d, (d @ d).repeat(2))
    # the min-norm point is the vertex g1 when g1.(g2 - g1) >= 0
    torch.testing.assert_close(mgda(T([[1.0, 0.0], [2.0, 1.0]])), T([1.0, 0.0]))
    torch.testing.assert_close(mgda_weights(T([[1.0, 1.0]])), T([1.0]))


def test_mgda_frank_wolfe_three_tasks():
    # scaled axes: a_k proportional to 1 / |g_k|^2
    a = mgda_weights(T([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]]))
    expect = T([1.0, 1 / 4, 1 / 9]) / (1 + 1 / 4 + 1 / 9)
    torch.testing.assert_close(a, expect, rtol=0, atol=1e-6)  # Frank-Wolfe stops at step < 1e-7
    # vertex solution
    torch.testing.assert_close(mgda(T([[1.0, 0.0], [2.0, 1.0], [2.0, -1.0]])), T([1.0, 0.0]))
    # KKT on a random matrix: g_k.d >= |d|^2 for all k, weights on the simplex
    G = torch.randn(5, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = mgda_weights(G, tol=0.0, max_iter=2000)
    d = a @ G
    assert abs(float(a.sum()) - 1) < 1e-12 and float(a.min()) >= 0
    assert float((G @ d).min() - d @ d) > -1e-8
    # l2 normalisation solves on unit rows: equal weights for orthogonal rows of any length
    torch.testing.assert_close(mgda_weights(T([[3.0, 0.0], [0.0, 1.0]]), normalize="l2"), T([0.5, 0.5]))
    with pytest.raises(ConfigError, match="normalize"):
        mgda(G, normalize="loss")


def test_mgda_ub_is_the_solver_on_representation_gradients():
    R = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mgda_ub_weights(R), mgda_weights(R))


def _cagrad_objective(w, G, c):
    g0 = G.mean(0)
    gw = w @ G
    return float(gw @ g0 + c * g0.norm() * gw.norm())


def test_cagrad_known_answers():
    # c = 0 is the mean gradient, for any rescale
    G = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for rescale in (0, 1, 2):
        torch.testing.assert_close(cagrad(G, c=0.0, rescale=rescale), G.mean(0))
    # orthogonal unit gradients: w = (1/2, 1/2), g_w = g0, d = (1 + c) g0
    for c in (0.2, 0.5, 0.9):
        torch.testing.assert_close(cagrad(ORTHO, c), (1 + c) * T([0.5, 0.5]))
        torch.testing.assert_close(cagrad(ORTHO, c, rescale=1), (1 + c) / (1 + c * c) * T([0.5, 0.5]))
        torch.testing.assert_close(cagrad(ORTHO, c, rescale=2), T([0.5, 0.5]))
    # 1-D conflict g = (2, -1): F(w) = 0.5 (3w - 1) + 0.5 c |3w - 1| is minimised at w = 0 for c < 1,
    # so g_w = g2 = -1 and d = g0 + 0.5 c (-1) = 0.5 - 0.5 c
    torch.testing.assert_close(cagrad(T([[2.0], [-1.0]]), 0.5), T([0.25]))


@pytest.mark.parametrize("K", [2, 3])
def test_cagrad_dual_solution_beats_a_grid(K):
    G = torch.randn(K, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(K))
    G[1] = -0.8 * G[0] + 0.3 * G[1]  # make two tasks conflict
    c = 0.5
    coef = cagrad_weights(G, c)
    g0n = float(G.mean(0).norm())
    lam_w = coef - 1.0 / K  # = (c |g0| / |g_w|) w
    w = lam_w / lam_w.sum()
    n = 400 if K == 2 else 120
    grid = [np.array(v) for v in (
        [(i / n, 1 - i / n) for i in range(n + 1)] if K == 2 else
        [(i / n, j / n, 1 - (i + j) / n) for i in range(n + 1) for j in range(n + 1 - i)])]
    best = min(_cagrad_objective(torch.as_tensor(v), G, c) for v in grid)
    assert _cagrad_objective(w, G, c) <= best + 1e-12
    # and d = g0 + c |g0| g_w / |g_w|
    gw = w @ G
    torch.testing.assert_close(coef @ G, G.mean(0) + c * g0n * gw / gw.norm())


def test_cagrad_official_solver_option():
    # symmetric case: the softmax iterate stays uniform; the +1e-4 smoothing only shifts the scale
    torch.testing.assert_close(cagrad(ORTHO, 0.5, solver="official"), cagrad(ORTHO, 0.5), rtol=1e-3, atol=0)
    G = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    d = cagrad(G, 0.4, rescale=1, solver="official")
    assert torch.isfinite(d).all()
    assert float(d @ G.mean(0)) > 0  # still a descent direction for the average loss
    with pytest.raises(ConfigError, match="solver"):
        cagrad(G, solver="lbfgs")
    with pytest.raises(ConfigError, match="rescale"):
        cagrad(G, rescale=3)
    with pytest.raises(ConfigError, match=">= 0"):
        cagrad(G, c=-1)
    assert math.isfinite(float(cagrad(T([[2.0], [-1.0]]), 2.0)[0]))  # c >= 1: g_w may be 0, no division by 0
