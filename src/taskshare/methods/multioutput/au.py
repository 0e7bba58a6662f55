"""The AU task-dominance metric (AdaTask paper, Eqs. 4-6; spec section 2) and its per-layer bar plot.

Task k's contribution Delta_k to the update of each shared element is the optimizer's own update split
into per-task parts (sum_k Delta_k is exactly the optimizer's update, weight decay aside):
- AdaTask (any variant, with or without PCGrad): the per-task update the optimizer applied,
  Delta_k = -lr u_k (``AdaTask(record=True).last_update``; ``update(G, delta=...)``); the trainer passes it;
- SGD (torch semantics, momentum mu, dampening d, Nesterov): per-task buffers b_k <- mu b_k + (1 - d) g_k
  (b_k = g_k on the first step), Delta_k = -lr b_k (Nesterov: -lr (g_k + mu b_k)); mu = 0: -lr g_k;
- Adam: -lr m^_k / (sqrt(v^) + eps), the joint first moment split linearly into per-task
  m_k <- b1 m_k + (1 - b1) g_k (sum_k m_k is Adam's m), v from the joint gradient sum_k g_k;
- ``kind="adatask"`` without ``delta`` (standalone use): Adam-AdaTask simulated from G,
  -lr m^_k / (sqrt(v^_k) + eps), v_k <- b2 v_k + (1 - b2) g_k^2
(hats: bias correction with the shared step t). ``follow(optimizer)`` takes lr, momentum / betas / eps from
the torch optimizer's first parameter group (the trainer calls it each recorded step).
The average of squared updates AU_k <- gamma AU_k + (1 - gamma) Delta_k^2 (elementwise) and the relative
share rAU_k = AU_k / sum_j AU_j (balanced: 1/K). Per layer we report the mean (or median) of rAU_k over
the layer's elements (elements no task has updated are left out). The learning-rate dominance uses the
same ratio on the tasks' accumulated squared gradients v_k (AdaTask's own accumulator, passed as ``vk``:
v_k, RMSProp's or AdaGrad's G_k; under SGD / Adam the per-task EMA with b2, which those optimizers do not
keep).

gamma: the paper's value is unconfirmed (spec section 9); the default 0.999 equals Adam's b2. The recorder
keeps its own shadow moments (up to 2K + 1 D-vectors): feed it the per-task gradients each step.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from taskshare.core.serialize import save_figure
from taskshare.errors import ConfigError

__all__ = ["AU_KINDS", "AURecorder", "plot_au"]

AU_KINDS = ("sgd", "adam", "adatask")


def _median(r: Tensor) -> Tensor:
    """Row medians, averaging the two middle values (torch.median takes the lower; quantile caps sizes)."""
    s, n = r.sort(dim=1).values, r.shape[1]
    return (s[:, (n - 1) // 2] + s[:, n // 2]) / 2


class AURecorder:
    """Per-layer AU shares. ``layers`` maps a layer name to its (start, stop) columns of the K x D matrix."""

    def __init__(self, layers: Mapping[str, tuple[int, int]], n_tasks: int, kind: str = "adam", *,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 gamma: float = 0.999, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False):
        if kind not in AU_KINDS:
            raise ConfigError(f"unknown AU optimizer kind {kind!r}; use one of {', '.join(AU_KINDS)}")
        if not 0 <= gamma < 1:
            raise ConfigError(f"AU gamma={gamma} must lie in [0, 1)")
        self.layers = {n: (int(a), int(b)) for n, (a, b) in layers.items()}
        self.n_tasks, self.kind, self.lr, self.betas, self.eps, self.gamma = n_tasks, kind, lr, betas, eps, gamma
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        self.t = 0
        self.au = self.m = self.v = self.vk = None
        self.last_delta: Tensor | None = None  # (K, D) per-task updates of the last step

    @classmethod
    def for_params(cls, named_params: Sequence[tuple[str, Tensor]], n_tasks: int, kind: str = "adam",
                   **kw) -> AURecorder:
        """Layers = modules: parameters ``enc.0.weight`` and ``enc.0.bias`` form layer ``enc.0``; columns in
        the order of ``named_params`` (the order used for the per-task gradients)."""
        layers: dict[str, list[int]] = {}
        off = 0
        for name, p in named_params:
            layer = name.rsplit(".", 1)[0] if "." in name else name
            span = layers.setdefault(layer, [off, off])
            if span[1] != off:
                raise ConfigError(f"parameters of layer {layer!r} are not contiguous; order them by module")
            off += p.numel()
            span[1] = off
        return cls({k: (a, b) for k, (a, b) in layers.items()}, n_tasks, kind, **kw)

    def follow(self, optimizer: torch.optim.Optimizer) -> None:
        """Take lr (and SGD's momentum / Adam's betas, eps) from the optimizer's first parameter group."""
        group = optimizer.param_groups[0]
        self.lr = float(group["lr"])
        if self.kind == "sgd" and isinstance(optimizer, torch.optim.SGD):
            self.momentum, self.dampening, self.nesterov = group["momentum"], group["dampening"], group["nesterov"]
        elif self.kind == "adam" and "betas" in group:
            self.betas, self.eps = tuple(group["betas"]), group["eps"]

    @torch.no_grad()
    def update(self, G: Tensor, delta: Tensor | None = None, vk: Tensor | None = None) -> None:
        """One optimisation step's per-task gradients G (K, D); ``delta`` (K, D): the per-task updates the
        optimizer applied (else derived from G by ``kind``); ``vk`` (K, D): its per-task accumulators."""
        K = self.n_tasks
        for name, x in (("gradient", G), ("update", delta), ("accumulator", vk)):
            if x is not None and (x.dim() != 2 or x.shape[0] != K or x.shape != G.shape):
                raise ConfigError(f"AU update expects a {K} x D {name} matrix, got {tuple(x.shape)}")
        if self.au is None:
            self.au, self.vk = torch.zeros_like(G), torch.zeros_like(G)
            self.m = torch.zeros_like(G)
            self.v = torch.zeros_like(G[0])
        self.t += 1
        if vk is not None:
            self.vk.copy_(vk)
        else:
            self.vk.mul_(self.betas[1]).addcmul_(G, G, value=1 - self.betas[1])
        if delta is None:
            delta = self._delta(G)
        self.last_delta = delta
        self.au.mul_(self.gamma).addcmul_(delta, delta, value=1 - self.gamma)

    def _delta(self, G: Tensor) -> Tensor:
        b1, b2 = self.betas
        if self.kind == "sgd":
            if not self.momentum:
                return -self.lr * G
            if self.t == 1:  # torch: the buffer starts as the first gradient
                self.m.copy_(G)
            else:
                self.m.mul_(self.momentum).add_(G, alpha=1 - self.dampening)
            return -self.lr * (G + self.momentum * self.m if self.nesterov else self.m)
        self.m.mul_(b1).add_(G, alpha=1 - b1)
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        if self.kind == "adam":
            s = G.sum(0)
            self.v.mul_(b2).addcmul_(s, s, value=1 - b2)
            denom = self.v.sqrt() / math.sqrt(bc2) + self.eps
        else:
            denom = self.vk.sqrt() / math.sqrt(bc2) + self.eps
        return -self.lr * (self.m / bc1) / denom

    def state_dict(self) -> dict:
        """The accumulators (for checkpoints; ``taskshare.core.serialize.save_state`` writes it)."""
        return {"t": self.t, "au": self.au, "m": self.m, "v": self.v, "vk": self.vk}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.au, self.m, self.v, self.vk = state["au"], state["m"], state["v"], state["vk"]

    def _shares(self, acc: Tensor | None, stat: str) -> dict[str, list[float]]:
        if stat not in ("mean", "median"):
            raise ConfigError(f"AU stat={stat!r}: use mean or median")
        if acc is None:
            raise ConfigError("no AU recorded yet; call update(G) after each step first")
        out = {}
        for name, (a, b) in self.layers.items():
            x = acc[:, a:b].double()
            tot = x.sum(0)
            keep = tot > 0
            r = x[:, keep] / tot[keep]
            if r.shape[1] == 0:
                out[name] = [float("nan")] * self.n_tasks
            else:
                out[name] = (r.mean(1) if stat == "mean" else _median(r)).tolist()
        return out

    def shares(self, stat: str = "mean") -> dict[str, list[float]]:
        """{layer: [rAU_1..rAU_K]}: each task's share of the average squared update."""
        return self._shares(self.au, stat)

    def lr_shares(self, stat: str = "mean") -> dict[str, list[float]]:
        """{layer: [..]}: each task's share of the accumulated squared gradients (learning-rate dominance)."""
        return self._shares(self.vk, stat)


def plot_au(records: Mapping[str, Mapping[str, Sequence[float]]] | Mapping[str, Sequence[float]],
            path: str | os.PathLike, tasks: Sequence[str] | None = None, title: str = "rAU per layer") -> Path:
    """Grouped bars of each task's rAU per shared layer, one panel per record (e.g. "adam", "adatask");
    a dashed line marks the balanced share 1/K. ``records`` is {label: {layer: shares}} or one
    {layer: shares}. Written atomically (temp file + os.replace)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if records and all(isinstance(v, Mapping) for v in records.values()):
        panels = dict(records)
    else:
        panels = {"": records}
    if not panels or any(not v for v in panels.values()):
        raise ConfigError("plot_au got no layers; record AU with AURecorder.update first")
    K = len(next(iter(next(iter(panels.values())).values())))
    tasks = list(tasks) if tasks is not None else [f"task {k + 1}" for k in range(K)]
    if len(tasks) != K:
        raise ConfigError(f"plot_au: {len(tasks)} task names for {K} shares per layer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(4.0, 1.1 * max(len(v) for v in panels.values())
                                                         + 2), 2.6 * len(panels)), squeeze=False)
    width = 0.8 / K
    try:
        for ax, (label, layers) in zip(axes[:, 0], panels.items()):
            names = list(layers)
            for k in range(K):
                xs = [i - 0.4 + width * (k + 0.5) for i in range(len(names))]
                ax.bar(xs, [layers[n][k] for n in names], width, label=tasks[k])
            ax.axhline(1.0 / K, color="k", ls="--", lw=0.8)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([re.sub(r"^encoder\.", "", n) for n in names], rotation=30, ha="right")
            ax.set_ylim(0, 1)
            ax.set_ylabel("rAU")
            ax.set_title(f"{title} — {label}" if label else title)
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)
