"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017, arXiv 1612.00796).

After task t the diagonal Fisher information of the shared parameters is estimated,

    F_t,i = E_x E_{y ~ p} [ (d log p(y | x; theta) / d theta_i)^2 ]      at theta*_t,

with y the true label ("empirical", the default) or drawn from the model ("true"), and later tasks
minimise

    L(theta) = CE(theta) + lambda/2 * sum_{t' < t} sum_i F_t',i (theta_i - theta*_t',i)^2 .

Implementation: the sum over earlier tasks is kept as two running sums, A = sum F_t' and
B = sum F_t' * theta*_t', since sum_t' F_t'(theta - theta*_t')^2 = A*theta^2 - 2*B*theta + const: the same
gradient as one penalty per task, in constant memory. `online=True` gives online EWC (Schwarz et al., 2018):
A <- gamma*A + F_t with the anchor at the latest theta*. Per-sample gradients for the Fisher come from
torch.func (vmap of grad), in chunks: no per-sample Python loop. Heads are task-specific and not penalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from taskshare.methods.base import SharedBackboneLearner, task_seed


@dataclass
class Options:
    lambda_: float = 1000.0       # the penalty strength lambda (--set ewc.lambda=...)
    fisher_samples: int = 1024    # training samples used to estimate the Fisher
    fisher: str = "empirical"     # empirical (true labels) | true (labels sampled from the model)
    online: bool = False          # online EWC: one decayed Fisher, anchored at the latest task
    gamma: float = 1.0            # online EWC decay

    def __post_init__(self):
        if self.fisher not in ("empirical", "true"):
            raise ValueError(f"fisher={self.fisher!r}: choose empirical or true")
        if self.lambda_ < 0 or self.fisher_samples < 1:
            raise ValueError("lambda must be >= 0 and fisher_samples >= 1")


def diagonal_fisher(net, params: dict[str, torch.Tensor], head: dict[str, torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor, mode: str, generator: torch.Generator, chunk: int = 64) -> dict[str, torch.Tensor]:
    """Mean over samples of squared per-sample gradients of log p(y|x) w.r.t. `params` (eval mode)."""
    names = list(params)
    fixed = {k: v.detach() for k, v in head.items()}

    def logp(p, xi, yi):
        feats = functional_call(net.backbone, {n.removeprefix("backbone."): v for n, v in p.items()},
                                (xi.unsqueeze(0),))
        logits = F.linear(feats, fixed["head.weight"], fixed["head.bias"])
        return F.log_softmax(logits, dim=1)[0].gather(0, yi.reshape(1)).squeeze(0)

    per_sample = vmap(grad(logp), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(params[n]) for n in names}
    was_training = net.training
    net.eval()
    detached = {n: v.detach() for n, v in params.items()}
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk]
        if mode == "true":
            with torch.no_grad():
                logits = F.linear(net.backbone(xb), fixed["head.weight"], fixed["head.bias"])
                yb = torch.multinomial(F.softmax(logits, 1), 1, generator=generator).squeeze(1)
        else:
            yb = y[start:start + chunk]
        g = per_sample(detached, xb, yb)
        for n in names:
            total[n] += g[n].pow(2).sum(0)
    net.train(was_training)
    return {n: t / len(x) for n, t in total.items()}


class EWC(SharedBackboneLearner):
    name = "ewc"
    description = "elastic weight consolidation: quadratic penalty weighted by the Fisher information"
    Options = Options

    def __init__(self, cfg, options, input_shape):
        super().__init__(cfg, options, input_shape)
        self.fisher_sum: dict[str, torch.Tensor] = {}    # A
        self.anchor_sum: dict[str, torch.Tensor] = {}    # B
        self.index = 0

    def begin_task(self, task, index):
        super().begin_task(task, index)
        self.index = index

    def shared(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.net.named_parameters() if n not in self.tt.slots and p.requires_grad}

    def regularizer(self, x, features):
        if not self.fisher_sum or self.options.lambda_ == 0:
            return None
        total = 0.0
        for n, p in self.shared().items():
            a, b = self.fisher_sum[n], self.anchor_sum[n]
            total = total + (a * p * p - 2 * b * p).sum()
        return 0.5 * self.options.lambda_ * total

    def end_task(self, task):
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, self.index, salt=3))
        n = min(self.options.fisher_samples, len(task.train))
        idx = torch.randperm(len(task.train), generator=gen)[:n]
        x, y = task.train.take(idx)
        params = self.shared()
        fisher = diagonal_fisher(self.net, params, self.tt.tensors(task.name), x.to(self.device),
                                 y.to(self.device), self.options.fisher, gen)
        for name, p in params.items():
            f, theta = fisher[name], p.detach()
            if self.options.online or name not in self.fisher_sum:
                decay = self.options.gamma if name in self.fisher_sum else 0.0
                a = decay * self.fisher_sum[name] + f if name in self.fisher_sum else f
                self.fisher_sum[name], self.anchor_sum[name] = a, a * theta
            else:
                self.fisher_sum[name] = self.fisher_sum[name] + f
                self.anchor_sum[name] = self.anchor_sum[name] + f * theta

    def extra_state(self):
        return {"fisher_sum": self.fisher_sum, "anchor_sum": self.anchor_sum, "index": self.index}

    def load_extra_state(self, state):
        self.fisher_sum, self.anchor_sum = dict(state["fisher_sum"]), dict(state["anchor_sum"])
        self.index = state["index"]
