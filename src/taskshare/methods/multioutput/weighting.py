"""Loss-weighting methods with state: each gives weights (or a weighted loss) for the K task losses.

- ``UncertaintyWeighting`` (Kendall, Gal & Cipolla, CVPR 2018, Eq. 7): learnable s_k = log sigma_k^2;
  a regression task contributes 1/(2 sigma^2) L + log sigma = 0.5 exp(-s) L + 0.5 s, a classification task
  1/sigma^2 L + log sigma = exp(-s) L + 0.5 s. s starts at 0. Its parameter must be in the optimizer.
  (Several reimplementations use exp(-s) L + s for every task: twice the regression form.)
- ``DWA`` (Liu, Johns & Davison, CVPR 2019, Eq. 7): w_k(t) = K exp(r_k(t-1)/T) / sum_i exp(r_i(t-1)/T),
  r_k(t-1) = L_k(t-1) / L_k(t-2), L_k(t) the average training loss of epoch t; w = 1 for the first two
  epochs; T = 2.
- ``GradNorm`` (Chen et al., ICML 2018, Alg. 1): learnable w (init 1). With n_k = |grad_W L_k| on the last
  shared layer W, G_k = w_k n_k, mean G_bar, inverse training rates r_k = L~_k / mean(L~), L~_k =
  L_k(t) / L_k(0), the loss L_grad = sum_k |G_k - G_bar r_k^alpha| with the target held constant, so
  dL_grad/dw_k = sign(G_k - target_k) n_k (no second-order autograd needed). After each step w is
  renormalised to sum to K. The step uses w(t); w(t+1) comes from w's own optimizer (Adam, lr 0.025 by
  default: the paper does not fix it). alpha = 1.5.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from taskshare.errors import ConfigError

__all__ = ["DWA", "GradNorm", "UncertaintyWeighting", "dwa_weights", "gradnorm_weight_grad"]


def _as_losses(losses: Tensor | Sequence[Tensor], K: int) -> Tensor:
    t = losses if isinstance(losses, Tensor) else torch.stack([torch.as_tensor(x) for x in losses])
    if t.shape != (K,):
        raise ConfigError(f"expected {K} task losses, got shape {tuple(t.shape)}; pass one scalar loss per task")
    return t


class UncertaintyWeighting(nn.Module):
    """Homoscedastic-uncertainty weighting; ``forward(losses)`` returns the total loss to minimise."""

    def __init__(self, n_tasks: int, kinds: str | Sequence[str] = "regression"):
        super().__init__()
        kinds = [kinds] * n_tasks if isinstance(kinds, str) else list(kinds)
        if len(kinds) != n_tasks or any(k not in ("regression", "classification") for k in kinds):
            raise ConfigError(f"uw kinds={kinds!r}: give one of regression / classification per task")
        self.n_tasks = n_tasks
        self.log_vars = nn.Parameter(torch.zeros(n_tasks))  # s_k = log sigma_k^2
        self.register_buffer("scale", torch.tensor([0.5 if k == "regression" else 1.0 for k in kinds]))

    def weights(self) -> Tensor:
        """The current factors multiplying each loss (detached)."""
        return (self.scale * torch.exp(-self.log_vars)).detach()

    def forward(self, losses: Tensor | Sequence[Tensor]) -> Tensor:
        L = _as_losses(losses, self.n_tasks)
        s = self.log_vars.to(L.dtype)
        return (self.scale.to(L.dtype) * torch.exp(-s) * L + 0.5 * s).sum()


def dwa_weights(prev: Tensor, prev2: Tensor, T: float = 2.0) -> Tensor:
    """DWA weights from the average losses of the last two epochs: K softmax((L(t-1)/L(t-2)) / T)."""
    r = prev / prev2
    return prev.numel() * torch.softmax(r / T, dim=0)


class DWA:
    """Dynamic Weight Average. ``observe`` each step's losses, ``end_epoch()`` at each epoch end."""

    def __init__(self, n_tasks: int, T: float = 2.0):
        if T <= 0:
            raise ConfigError(f"dwa T={T} must be > 0")
        self.n_tasks, self.T = n_tasks, T
        self.history: list[Tensor] = []  # average loss per epoch, (K,) each
        self._sum: Tensor | None = None
        self._count = 0

    def weights(self) -> Tensor:
        if len(self.history) < 2:
            return torch.ones(self.n_tasks, dtype=torch.float64)
        return dwa_weights(self.history[-1], self.history[-2], self.T)

    def observe(self, losses: Tensor | Sequence[Tensor]) -> None:
        L = _as_losses(losses, self.n_tasks).detach().double()
        self._sum = L.clone() if self._sum is None else self._sum + L
        self._count += 1

    def end_epoch(self, epoch_losses: Sequence[float] | Tensor | None = None) -> None:
        """Close an epoch with its average losses (given, or the mean of the observed ones)."""
        if epoch_losses is None:
            if self._count == 0:
                raise ConfigError("DWA.end_epoch without losses needs observe() calls during the epoch")
            avg = (self._sum / self._count).cpu()
        else:
            avg = _as_losses(torch.as_tensor(epoch_losses, dtype=torch.float64), self.n_tasks).cpu()
        self.history.append(avg)
        self.history = self.history[-2:]
        self._sum, self._count = None, 0

    def state_dict(self) -> dict:
        return {"history": [h.tolist() for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [torch.tensor(h, dtype=torch.float64) for h in state["history"]]


def gradnorm_weight_grad(weights: Tensor, norms: Tensor, loss_ratios: Tensor, alpha: float) -> Tensor:
    """d L_grad / d w for L_grad = sum_k |w_k n_k - G_bar r_k^alpha| (target constant; Chen et al. Eq. 2)."""
    G = weights * norms
    r = loss_ratios / loss_ratios.mean()
    target = G.mean() * r.pow(alpha)
    return torch.sign(G - target) * norms


class GradNorm:
    """GradNorm task weights. ``update(losses, norms)`` returns w(t) for this step's loss and moves w."""

    def __init__(self, n_tasks: int, alpha: float = 1.5, lr: float = 0.025, optimizer: str = "adam"):
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(f"gradnorm optimizer={optimizer!r}: use adam or sgd")
        self.n_tasks, self.alpha = n_tasks, alpha
        self.w = nn.Parameter(torch.ones(n_tasks, dtype=torch.float64))
        self.opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)([self.w], lr=lr)
        self.initial: Tensor | None = None  # L(0)

    def update(self, losses: Tensor | Sequence[Tensor], norms: Tensor) -> Tensor:
        """``norms[k] = |grad_W L_k|`` on the last shared layer (unweighted)."""
        L = _as_losses(losses, self.n_tasks).detach().double().cpu()
        norms = norms.detach().double().cpu()
        if self.initial is None:
            self.initial = L.clone()
        used = self.w.detach().clone()
        self.w.grad = gradnorm_weight_grad(used, norms, L / self.initial, self.alpha)
        self.opt.step()
        with torch.no_grad():
            self.w.mul_(self.n_tasks / self.w.sum())
        return used

    def state_dict(self) -> dict:
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict(), "initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])
        self.initial = state["initial"]
