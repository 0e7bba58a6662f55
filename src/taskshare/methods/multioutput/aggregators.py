"""Gradient-combining methods: pure functions of the K x D per-task gradient matrix G (row k = grad of L_k).

Each returns the combined D-vector the trainer writes into the shared parameters' ``.grad``; the small
K x K problems (min-norm, CAGrad's dual) are solved in float64 numpy on the Gram matrix G G^T, so the D-sized
work is two matrix products on G's device.

- ``ew(G) = sum_k g_k``: equal weighting, the gradient of sum_k L_k (the official AdaTask baseline).
  ``mean(G)`` is the average.
- ``pcgrad(G, generator)``: PCGrad (Yu et al., NeurIPS 2020, Alg. 1). For each task i, in a random order of
  the other tasks j, if g_i^PC . g_j < 0 then g_i^PC -= (g_i^PC . g_j / |g_j|^2) g_j, projecting against the
  *original* g_j; the update is sum_i g_i^PC. ``pcgrad_project`` returns the K projected rows (used by
  AdaTask+PCGrad).
- ``mgda(G)``: MGDA (Sener & Koltun, NeurIPS 2018): d = sum_k a_k g_k with a the min-norm point of the
  convex hull, min_{a in simplex} |sum_k a_k g_k|^2. K = 2 in closed form (their Alg. 1):
  a_1 = clip((g_2 - g_1) . g_2 / |g_1 - g_2|^2, 0, 1); K > 2 by their Frank-Wolfe solver (Alg. 2) from the
  uniform point with exact line search. The official MinNormSolver clips a_1 to [0.001, 0.999] and starts
  from the best pair; we use the paper's exact clip and start. ``normalize="l2"`` solves on unit rows
  (the paper's experiments normalise gradients; the returned d still combines the raw rows).
- ``mgda_ub_weights(R)``: MGDA-UB (same paper, Sec. 3.3). The same solver on R, the K x (B*F) gradients of
  each task loss w.r.t. the shared *representation* z = encoder(x) (cheap: only the heads are
  differentiated), instead of w.r.t. the shared parameters. The trainer then backpropagates
  sum_k a_k L_k once through the encoder: one backward pass instead of K.
- ``cagrad(G, c=0.5)``: CAGrad (Liu et al., NeurIPS 2021, Alg. 1). g_0 = mean_k g_k, phi = c^2 |g_0|^2,
  w* = argmin_{w in simplex} g_w . g_0 + sqrt(phi) |g_w| with g_w = sum_k w_k g_k, and
  d = g_0 + sqrt(phi) / |g_w*| g_w*. The dual is solved accurately (``solver="exact"``: golden-section
  search for K = 2, projected gradient descent with backtracking for K > 2). The official code instead runs
  20 momentum-SGD steps (lr 25, momentum 0.5) on softmax logits of w with +1e-4 smoothing
  (``solver="official"``) and divides d by 1 + c^2 (``rescale=1``; ``rescale=2`` divides by 1 + c). The
  paper's d is ``rescale=0``, the default. c = 0 gives the mean gradient.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from taskshare.errors import ConfigError

__all__ = [
    "AGGREGATORS", "cagrad", "cagrad_weights", "ew", "mean", "mgda", "mgda_ub_weights", "mgda_weights",
    "mgda_weights_gram",
    "min_norm_2", "pcgrad", "pcgrad_project",
]


def _check(G: Tensor) -> None:
    if G.dim() != 2 or G.shape[0] < 1:
        raise ConfigError(f"expected a K x D per-task gradient matrix, got shape {tuple(G.shape)}; "
                          "build it with per_task_gradients")


def _gram(G: Tensor) -> np.ndarray:
    return (G.double() @ G.double().T).cpu().numpy()


def ew(G: Tensor) -> Tensor:
    """Equal weighting: sum_k g_k, the gradient of the summed loss."""
    _check(G)
    return G.sum(0)


def mean(G: Tensor) -> Tensor:
    """The average gradient (1/K) sum_k g_k."""
    _check(G)
    return G.mean(0)


# ---------------------------------------------------------------- PCGrad

def pcgrad_project(G: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The K projected gradients g_i^PC (rows), each projected off the conflicting original g_j."""
    _check(G)
    K = G.shape[0]
    P = G.clone()
    sq = (G * G).sum(1)
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    for i in range(K):
        for j in torch.randperm(K, generator=generator).tolist():
            if j == i:
                continue
            dot = P[i] @ G[j]
            # project only on conflict (dot < 0); a zero g_j never conflicts. No host sync.
            P[i] -= (torch.clamp(dot, max=0) / safe[j]) * G[j]
    return P


def pcgrad(G: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad update sum_i g_i^PC (random task order from ``generator``)."""
    return pcgrad_project(G, generator).sum(0)


# ---------------------------------------------------------------- MGDA

def min_norm_2(v11: float, v12: float, v22: float) -> float:
    """a minimising |a v1 + (1 - a) v2|^2 from the three dot products (Sener & Koltun, Alg. 1)."""
    den = v11 + v22 - 2.0 * v12
    if den <= 0.0:  # v1 == v2: every a gives the same point
        return 0.5
    return min(1.0, max(0.0, (v22 - v12) / den))


def _frank_wolfe(M: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Min-norm point of the convex hull from the Gram matrix M (Sener & Koltun, Alg. 2)."""
    K = M.shape[0]
    a = np.full(K, 1.0 / K)
    for _ in range(max_iter):
        Ma = M @ a
        t = int(np.argmin(Ma))
        # line search between the current point (theta) and vertex t: theta.theta, theta.g_t, g_t.g_t
        g = 1.0 - min_norm_2(float(a @ Ma), float(Ma[t]), float(M[t, t]))
        a = (1.0 - g) * a
        a[t] += g
        if g < tol:
            break
    return a


def mgda_weights(G: Tensor, normalize: str = "none", max_iter: int = 250, tol: float = 1e-7) -> Tensor:
    """The min-norm convex weights a (K,) of the rows of G (exact for K <= 2)."""
    _check(G)
    return mgda_weights_gram(_gram(G), normalize, max_iter, tol).to(dtype=G.dtype, device=G.device)


def mgda_weights_gram(M, normalize: str = "none", max_iter: int = 250, tol: float = 1e-7) -> Tensor:
    """The min-norm weights from the K x K Gram matrix M = G G^T alone (float64 tensor on the CPU).

    Under data parallelism the Gram matrix of the global gradients is the (weighted) sum of the ranks'
    Gram matrices, so MGDA-UB needs only this K x K all-reduce (see ``MultiTaskTrainer``)."""
    if normalize not in ("none", "l2"):
        raise ConfigError(f"mgda normalize={normalize!r}: use none or l2")
    M = M.detach().double().cpu().numpy() if isinstance(M, Tensor) else np.asarray(M, dtype=np.float64)
    if normalize == "l2":
        n = np.sqrt(np.maximum(np.diag(M), 1e-300))
        M = M / np.outer(n, n)
    K = M.shape[0]
    if K == 1:
        a = np.ones(1)
    elif K == 2:
        a1 = min_norm_2(M[0, 0], M[0, 1], M[1, 1])
        a = np.array([a1, 1.0 - a1])
    else:
        a = _frank_wolfe(M, max_iter, tol)
    return torch.as_tensor(a, dtype=torch.float64)


def mgda(G: Tensor, normalize: str = "none", max_iter: int = 250, tol: float = 1e-7) -> Tensor:
    """MGDA common descent direction sum_k a_k g_k (a: min-norm weights of the rows, see mgda_weights)."""
    return mgda_weights(G, normalize, max_iter, tol) @ G


def mgda_ub_weights(R: Tensor, normalize: str = "none", max_iter: int = 250, tol: float = 1e-7) -> Tensor:
    """MGDA-UB weights: the min-norm solver on R (K x M), the per-task gradients w.r.t. the shared
    representation (e.g. ``per_task_gradients(losses, [z])`` with z the encoder output). The caller then
    backpropagates ``sum_k a_k L_k`` through the encoder (see the module docstring)."""
    return mgda_weights(R, normalize, max_iter, tol)


# ---------------------------------------------------------------- CAGrad

def _cagrad_obj(w: np.ndarray, A: np.ndarray, b: np.ndarray, cn: float) -> float:
    return float(w @ b + cn * math.sqrt(max(float(w @ A @ w), 0.0)))


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)


def _cagrad_exact(A: np.ndarray, b: np.ndarray, cn: float, max_iter: int = 500) -> np.ndarray:
    K = len(b)
    f = lambda w: _cagrad_obj(w, A, b, cn)  # noqa: E731
    if K == 2:  # golden-section search on w_1 (the objective is convex)
        lo, hi, r = 0.0, 1.0, (math.sqrt(5.0) - 1.0) / 2.0
        x1, x2 = hi - r * (hi - lo), lo + r * (hi - lo)
        f1, f2 = f(np.array([x1, 1 - x1])), f(np.array([x2, 1 - x2]))
        for _ in range(100):
            if f1 <= f2:
                hi, x2, f2 = x2, x1, f1
                x1 = hi - r * (hi - lo)
                f1 = f(np.array([x1, 1 - x1]))
            else:
                lo, x1, f1 = x1, x2, f2
                x2 = lo + r * (hi - lo)
                f2 = f(np.array([x2, 1 - x2]))
        cands = [np.array([x, 1 - x]) for x in (0.0, 1.0, (lo + hi) / 2)]
        return min(cands, key=f)
    w = np.full(K, 1.0 / K)
    fw, step = f(w), 1.0
    for _ in range(max_iter):
        n = math.sqrt(max(float(w @ A @ w), 1e-30))
        grad = b + cn * (A @ w) / n
        while True:
            w2 = _project_simplex(w - step * grad)
            f2 = f(w2)
            if f2 <= fw - 1e-4 * float(grad @ (w - w2)) or step < 1e-12:
                break
            step *= 0.5
        done = np.abs(w2 - w).max() < 1e-12
        w, fw, step = w2, f2, step * 2.0
        if done:
            break
    return w


def _cagrad_official(A: np.ndarray, c: float, iters: int = 20, lr: float = 25.0, momentum: float = 0.5):
    """The official solver: momentum SGD on softmax logits of w, A and b normalised by the mean row norm,
    +1e-4 smoothing; returns (w, sqrt(phi) / |g_w|) as the official code computes them."""
    K = A.shape[0]
    A = A / (np.sqrt(np.diag(A) + 1e-4).mean() ** 2)
    b = A.mean(1)
    cn = math.sqrt(float(b.mean()) + 1e-4) * c
    z, buf = np.zeros(K), None
    best, best_obj = None, math.inf
    for i in range(iters + 1):
        s = np.exp(z - z.max())
        s /= s.sum()
        q = math.sqrt(float(s @ A @ s) + 1e-4)
        obj = float(s @ b) + cn * q
        if obj < best_obj:
            best, best_obj = s.copy(), obj
        if i == iters:
            break
        u = b + cn * (A @ s) / q
        g = s * (u - s @ u)
        buf = g if buf is None else momentum * buf + g
        z = z - lr * buf
    return best, cn / (math.sqrt(float(best @ A @ best) + 1e-4) + 1e-4)


def cagrad_weights(G: Tensor, c: float = 0.5, rescale: int = 0, solver: str = "exact") -> Tensor:
    """Coefficients (K,) with cagrad(G) = coef @ G: 1/K + (sqrt(phi) / |g_w*|) w*, then the rescale."""
    _check(G)
    if c < 0:
        raise ConfigError(f"cagrad c={c} must be >= 0")
    if rescale not in (0, 1, 2):
        raise ConfigError(f"cagrad rescale={rescale}: use 0 (paper), 1 (divide by 1+c^2, official) or 2 (1+c)")
    if solver not in ("exact", "official"):
        raise ConfigError(f"cagrad solver={solver!r}: use exact or official")
    K = G.shape[0]
    A = _gram(G)
    coef = np.full(K, 1.0 / K)
    if c > 0:
        if solver == "exact":
            b = A.mean(1)                                  # (G G^T 1/K)_k = g_k . g_0
            cn = c * math.sqrt(max(float(b.mean()), 0.0))  # sqrt(phi) = c |g_0|
            w = _cagrad_exact(A, b, cn)
            gw = math.sqrt(max(float(w @ A @ w), 0.0))
            lam = cn / gw if gw > 0 else 0.0
        else:
            w, lam = _cagrad_official(A, c)
        coef = coef + lam * w
    coef = coef / {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    return torch.as_tensor(coef, dtype=G.dtype, device=G.device)


def cagrad(G: Tensor, c: float = 0.5, rescale: int = 0, solver: str = "exact") -> Tensor:
    """CAGrad update direction (paper Alg. 1; see the module docstring for the options)."""
    return cagrad_weights(G, c, rescale, solver) @ G


AGGREGATORS = {"ew": ew, "mean": mean, "pcgrad": pcgrad, "mgda": mgda, "cagrad": cagrad}
