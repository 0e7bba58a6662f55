"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017, arXiv 1612.00796).

After task t the diagonal Fisher information of the shared parameters is estimated,

    F_t,i = E_x E_{y ~ p} [ (d log p(y | x; theta) / d theta_i)^2 ]      at theta*_t,

with y the true label ("empirical", the default) or drawn from the model ("true"), and later tasks
minimise

    L(theta) = CE(theta) + lambda/2 * sum_{t' < t} sum_i F_t',i (theta_i - theta*_t',i)^2 .

Implementation: the sum over earlier tasks is kept as two running sums, A = sum F_t' and
B = sum F_t' * theta*_t', since sum_t' F_t'(theta - theta*_t')^2 = A*theta^2 - 2*B*theta + C with the scalar
C = sum F_t' theta*_t'^2: the same gradient as one penalty per task, in constant memory (C only shifts the
value, so the logged loss is the penalty itself, never negative). `online=True` gives online EWC (Schwarz et
al., 2018): A <- gamma*A + F_t with the anchor at the latest theta*. Heads are task-specific and not penalised.

The Fisher needs sum_i g_i^2 over per-sample gradients g_i, never the gradients themselves. For a Linear
layer g_i = d_i a_i^T (output gradient d_i, input a_i), so sum_i g_i^2 = (d^2)^T (a^2): one batched
backward and one matmul (the trick of Goodfellow, arXiv 1510.01799, and BackPACK's BatchGrad/SumGradSquared,
Dangel et al., ICLR 2020, arXiv 1912.10985). Conv2d layers get their per-sample gradients from unfold (one
layer at a time), eval-mode BatchNorm from its normalised input. Any other layer owning a penalised
parameter falls back to torch.func (vmap of grad) in chunks. No per-sample Python loop either way. The
penalty and its gradient lambda*(A*theta - B) come from one fused autograd Function per parameter tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
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
                    y: torch.Tensor, mode: str, generator: torch.Generator, chunk: int = 64,
                    fast: bool = True) -> dict[str, torch.Tensor]:
    """Mean over samples of squared per-sample gradients of log p(y|x) w.r.t. `params` (eval mode).

    `fast`: the closed form when every parameter in `params` belongs to a Linear (2-d input), Conv2d
    (groups 1) or BatchNorm layer called once per forward; else (or with fast=False) vmap of grad.
    Both give the same estimate up to float summation order, from the same labels."""
    fixed = {k: v.detach() for k, v in head.items()}
    was_training = net.training
    net.eval()
    try:
        owners = _owners(net.backbone, params) if fast else None
        state = generator.get_state()
        with torch.enable_grad():
            total = _fast_fisher(net, owners, fixed, x, y, mode, generator, chunk) if owners else None
        if total is None:
            generator.set_state(state)
            total = _vmap_fisher(net, params, fixed, x, y, mode, generator, chunk)
    finally:
        net.train(was_training)
    return {n: t / len(x) for n, t in total.items()}


def _labels(logits: torch.Tensor, y: torch.Tensor, mode: str, generator: torch.Generator, chunk: int) -> torch.Tensor:
    """The true labels ("empirical") or labels drawn from the model ("true"), `chunk` rows per draw."""
    if mode != "true":
        return y
    probs = F.softmax(logits, 1)
    return torch.cat([torch.multinomial(probs[s:s + chunk], 1, generator=generator).squeeze(1)
                      for s in range(0, len(probs), chunk)])


def _vmap_fisher(net, params, fixed, x, y, mode, generator, chunk):
    """The general path: per-sample gradients from vmap(grad), `chunk` samples at a time; sums of squares."""
    def logp(p, xi, yi):
        feats = functional_call(net.backbone, {n.removeprefix("backbone."): v for n, v in p.items()},
                                (xi.unsqueeze(0),))
        logits = F.linear(feats, fixed["head.weight"], fixed["head.bias"])
        return F.log_softmax(logits, dim=1)[0].gather(0, yi.reshape(1)).squeeze(0)

    per_sample = vmap(grad(logp), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    detached = {n: v.detach() for n, v in params.items()}
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk]
        with torch.no_grad():
            logits = F.linear(net.backbone(xb), fixed["head.weight"], fixed["head.bias"]) if mode == "true" else None
        yb = _labels(logits, y[start:start + chunk], mode, generator, chunk)
        g = per_sample(detached, xb, yb)
        for n in total:
            total[n] += g[n].pow(2).sum(0)
    return total


def _owners(backbone: nn.Module, params: dict[str, torch.Tensor]) -> dict[nn.Module, dict[str, str]] | None:
    """The module owning each parameter in `params` ({module: {local name: full name}}), or None when some
    owner has no closed form below (then the vmap path runs)."""
    owners: dict[nn.Module, dict[str, str]] = {}
    for prefix, m in backbone.named_modules():
        for local, p in m.named_parameters(recurse=False):
            full = f"backbone.{prefix}.{local}" if prefix else f"backbone.{local}"
            if params.get(full) is p and p.requires_grad:  # the module's own tensors: they are differentiated
                owners.setdefault(m, {})[local] = full
    covered = {full for names in owners.values() for full in names.values()}
    if covered != set(params) or not all(_closed_form(m) for m in owners):
        return None
    return owners


def _closed_form(m: nn.Module) -> bool:
    if type(m) is nn.Linear:
        return True
    if type(m) is nn.Conv2d:
        return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    return type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) and m.running_mean is not None  # eval: running stats


def _squared_grads(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """sum_i (d logp_i / d param)^2 of module `m` from its inputs `a` and output grads `g` (row i: sample i)."""
    if type(m) is nn.Linear:
        if a.dim() != 2:
            return None  # a sequence: the per-sample gradient is a sum over positions, no closed form
        return {"weight": g.pow(2).t() @ a.pow(2), "bias": g.pow(2).sum(0)}
    if type(m) is nn.Conv2d:  # per-sample gradients through unfold, one conv's worth at a time
        cols = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)
        w = torch.bmm(g.flatten(2), cols.transpose(1, 2))
        return {"weight": w.pow(2).sum(0).view_as(m.weight), "bias": g.sum((2, 3)).pow(2).sum(0)}
    xhat = (a - _bn_shape(m.running_mean, a)) * _bn_shape(torch.rsqrt(m.running_var + m.eps), a)
    dims = tuple(range(2, a.dim()))
    gw, gb = ((g * xhat).sum(dims), g.sum(dims)) if dims else (g * xhat, g)
    return {"weight": gw.pow(2).sum(0), "bias": gb.pow(2).sum(0)}


def _bn_shape(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (a.dim() - 2)))


class _Capture:
    """Forward hooks keeping each owner's input and, through a tensor hook, its output's gradient (the
    gradient of the value before any in-place op that follows, e.g. ReLU(inplace=True))."""

    def __init__(self, owners):
        self.inputs: dict[nn.Module, list] = {m: [] for m in owners}
        self.grads: dict[nn.Module, list] = {m: [] for m in owners}
        self.handles = [m.register_forward_hook(self.hook) for m in owners]

    def hook(self, m, args, out):
        self.inputs[m].append(args[0].detach())
        out.register_hook(self.grads[m].append)

    def close(self):
        for h in self.handles:
            h.remove()


def _fast_fisher(net, owners, head, x, y, mode, generator, chunk, big=256):
    """The closed-form path: one batched forward/backward per `big` samples (labels still drawn per `chunk`
    rows, as the vmap path draws them); None when a module is called other than once per forward."""
    params = [getattr(m, local) for m, names in owners.items() for local in names]
    total = {full: torch.zeros_like(getattr(m, local)) for m, names in owners.items() for local, full in names.items()}
    big = max(chunk, big // chunk * chunk)
    cap = _Capture(owners)
    try:
        for start in range(0, len(x), big):
            for lst in (*cap.inputs.values(), *cap.grads.values()):
                lst.clear()
            logits = F.linear(net.backbone(x[start:start + big]), head["head.weight"], head["head.bias"])
            yb = _labels(logits.detach(), y[start:start + big], mode, generator, chunk)
            logp = F.log_softmax(logits, dim=1).gather(1, yb[:, None]).sum()
            torch.autograd.grad(logp, params, allow_unused=True)
            for m, names in owners.items():
                if len(cap.inputs[m]) != 1 or len(cap.grads[m]) != 1:
                    return None
                sq = _squared_grads(m, cap.inputs[m][0], cap.grads[m][0])
                if sq is None:
                    return None
                for local, full in names.items():
                    total[full] += sq[local]
    finally:
        cap.close()
    return total


class _Quadratic(torch.autograd.Function):
    """0.5 * sum(a*p^2) + sum(nb*p) with a = lambda*A, nb = -lambda*B, and its gradient g = a*p + nb from one
    fused pass (autograd through the written-out expression makes about three times the temporaries)."""

    @staticmethod
    def forward(ctx, p, a, nb):
        with torch.autocast(p.device.type, enabled=False):
            g = torch.addcmul(nb, a, p)
            ctx.save_for_backward(g)
            return 0.5 * (torch.dot(p.flatten(), g.flatten()) + torch.dot(p.flatten(), nb.flatten()))

    @staticmethod
    def backward(ctx, out):
        (g,) = ctx.saved_tensors
        return g * out, None, None


class EWC(SharedBackboneLearner):
    name = "ewc"
    description = "elastic weight consolidation: quadratic penalty weighted by the Fisher information"
    Options = Options

    def __init__(self, cfg, options, input_shape):
        super().__init__(cfg, options, input_shape)
        self.fisher_sum: dict[str, torch.Tensor] = {}    # A
        self.anchor_sum: dict[str, torch.Tensor] = {}    # B
        self.constant = 0.0                              # C, summed over the tensors (the value's offset)
        self.index = 0
        self._scaled: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def begin_task(self, task, index):
        super().begin_task(task, index)
        self.index = index

    def shared(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.net.named_parameters() if n not in self.tt.slots and p.requires_grad}

    def regularizer(self, x, features):
        if not self.fisher_sum or self.options.lambda_ == 0:
            return None
        if self._scaled is None:  # lambda*A and -lambda*B, rebuilt when the sums change
            lam = self.options.lambda_
            self._scaled = {n: (lam * a, -lam * self.anchor_sum[n]) for n, a in self.fisher_sum.items()}
        offset = 0.5 * self.options.lambda_ * self.constant
        return sum(_Quadratic.apply(p, *self._scaled[n]) for n, p in self.shared().items()) + offset

    def end_task(self, task):
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, self.index, salt=3))
        n = min(self.options.fisher_samples, len(task.train))
        idx = torch.randperm(len(task.train), generator=gen)[:n]
        x, y = task.train.take(idx)
        params = self.shared()
        self._scaled = None
        fisher = diagonal_fisher(self.net, params, self.tt.tensors(task.name), x.to(self.device),
                                 y.to(self.device), self.options.fisher, gen)
        constant = 0.0 if self.options.online else self.constant
        for name, p in params.items():
            f, theta = fisher[name], p.detach()
            if self.options.online or name not in self.fisher_sum:
                decay = self.options.gamma if name in self.fisher_sum else 0.0
                a = decay * self.fisher_sum[name] + f if name in self.fisher_sum else f
                self.fisher_sum[name], self.anchor_sum[name] = a, a * theta
                constant += float(torch.dot(self.anchor_sum[name].flatten().double(), theta.flatten().double()))
            else:
                self.fisher_sum[name] = self.fisher_sum[name] + f
                self.anchor_sum[name] = self.anchor_sum[name] + f * theta
                constant += float(torch.dot((f * theta).flatten().double(), theta.flatten().double()))
        self.constant = constant

    def extra_state(self):
        return {"fisher_sum": self.fisher_sum, "anchor_sum": self.anchor_sum, "index": self.index,
                "constant": self.constant}

    def load_extra_state(self, state):
        self.fisher_sum, self.anchor_sum = dict(state["fisher_sum"]), dict(state["anchor_sum"])
        self._scaled = None
        self.index = state["index"]
        self.constant = float(state.get("constant", 0.0))
