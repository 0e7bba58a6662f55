"""AdaTask optimizers (Yang et al., "AdaTask: A Task-Aware Adaptive Learning Rate Approach to Multi-Task
Learning", AAAI 2023): per-task accumulators for the shared parameters.

Shared parameters theta_s, task gradients g_k = grad_{theta_s} L_k (k = 1..K). Each task keeps its own
accumulators and the shared update is the sum of K normalised per-task steps (paper Algorithm 2):

- Adam (official code EnnengYang/AdaTask@84853de, = Alg. 2 lines 21-29):
      m_k <- b1 m_k + (1 - b1) g_k,  v_k <- b2 v_k + (1 - b2) g_k^2,
      theta_s <- theta_s - lr sum_k (m_k / (1 - b1^t)) / (sqrt(v_k / (1 - b2^t)) + eps)
  bias correction on, eps outside the root, no 1/K factor, one step counter t per parameter.
- RMSProp (Alg. 2): G_k <- gamma G_k + (1 - gamma) g_k^2, theta_s -= lr sum_k g_k / (sqrt(G_k) + eps).
- AdaGrad (Alg. 2): G_k <- G_k + g_k^2, theta_s -= lr sum_k g_k / (sqrt(G_k) + eps).
With K = 1 these are exactly torch's Adam, RMSprop(alpha=gamma, centered=False, momentum=0) and
Adagrad(lr_decay=0, initial_accumulator_value=0), eps placement included. Task-specific parameters (heads)
get that plain optimizer on their own ``.grad`` (the gradient of sum_k w_k L_k): 2 buffers each for Adam,
2K for a shared parameter (``exp_avg`` / ``exp_avg_sq`` of shape (K, *p.shape)).

Consequences to know (spec section 5): the shared update is invariant to each task's loss scale (up to
eps), so loss weights barely act on shared parameters; the shared step is about K times Adam's while heads
get 1x, so learning rates do not carry over; a step can increase the joint loss (gradients (1, 1, 1, -4):
the first step is -lr sum_k sign(g_k)).

Choices where the official code is silent or broken:

- **Weight decay** (ignored by the official code): L2, added to *each task's* gradient before its
  accumulators, g_k + wd * theta (torch's ``weight_decay`` semantics, so K = 1 equals torch with the same
  ``weight_decay``; with K tasks the decay acts through K normalised steps). ``decoupled_weight_decay=True``
  instead shrinks theta <- theta (1 - lr wd) once per step, independent of K (AdamW; K = 1 equals
  ``torch.optim.AdamW``). Heads use the same rule on their single gradient.
- **Missing gradients** (a task whose loss does not reach a parameter: ``None`` in the nested form, or
  ``reached[k, i] = False``): ``missing="skip"`` (default, the paper's per-task accumulators only exist for
  the tasks sharing the parameter, and torch skips a parameter without grad): that task's accumulators
  and its own step count do not advance and it adds nothing; bias correction uses the task's own count
  (equal to t whenever the task always reaches the parameter). ``missing="zero"`` is the official
  behaviour: the moments advance with a zero gradient (momentum keeps being applied). A reached parameter
  with a numerically zero gradient is a real gradient in both modes.
- **AdaTask + PCGrad** (the paper reports gains when combining AdaTask with gradient-direction methods but
  does not fix the composition): ``pcgrad="gradients"`` (default for the combination) projects the raw task
  gradients with PCGrad (over all shared parameters jointly) and feeds the projected g_k^PC into the
  per-task accumulators; the direction fix comes first and AdaTask's per-task scale normalisation still
  holds (the projection of g_i is homogeneous in g_i and scale-free in g_j). ``pcgrad="updates"`` projects
  the K normalised per-task updates before summing them instead.
- The learning rate is each group's own (the official code takes the last group's); ``amsgrad`` is not
  offered (the official code ignores it).

Implementation (fused step): the K x D accumulators of all shared parameters live in flat buffers (one
per accumulator, rows = tasks, columns in ``FlatLayout`` order; ``state[p][name]`` is the (K, *shape)
view of p's columns), so a step is a handful of whole-buffer ops whatever the number of parameters; bias
corrections are Python scalars while every task has reached every parameter equally often (otherwise a
(K, D) correction and a reach mask). The heads' accumulators are flat too (one (D_heads,) buffer). The elementwise
arithmetic is the per-parameter formulas' own, in the same order. ``record=True`` keeps the step's
per-task updates Delta_k = -lr u_k (K, D) in ``last_update`` (after the ``pcgrad="updates"`` projection;
decoupled weight decay belongs to no task) and the fed gradients (after the ``"gradients"`` projection, L2 term included)
in ``last_grads``, for the AU metric (au.py).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from taskshare.errors import ConfigError
from taskshare.methods.multioutput.aggregators import pcgrad_project
from taskshare.methods.multioutput.gradients import FlatLayout, flatten

__all__ = ["AdaTask", "AdaTaskAdagrad", "AdaTaskAdam", "AdaTaskRMSprop", "VARIANTS", "make_adatask"]

MISSING = ("skip", "zero")
PCGRAD_ON = (None, "gradients", "updates")


class _Bias:
    """Bias corrections 1 - beta^t: Python floats for one shared count t, else (K, D) tensors from the
    (K, P) counts (1 where t = 0, such entries are masked out)."""

    def __init__(self, t: int | None, counts: list[list[int]] | None = None, layout: FlatLayout | None = None,
                 like: Tensor | None = None):
        self.t, self.counts, self.layout, self.like = t, counts, layout, like

    def corr(self, beta: float) -> float | Tensor:
        if self.t is not None:
            return 1.0 - beta ** self.t
        vals = [[1.0 - beta ** t if t > 0 else 1.0 for t in row] for row in self.counts]
        n = torch.tensor(self.layout.numels, device=self.like.device)
        return torch.tensor(vals, dtype=self.like.dtype, device=self.like.device).repeat_interleave(n, dim=1)

    def corr_sqrt(self, beta: float) -> float | Tensor:
        c = self.corr(beta)
        return math.sqrt(c) if isinstance(c, float) else c.sqrt()


class _Flat:
    """A group's accumulators in flat buffers ((rows, D), or (D,) without rows); ``state[p][name]`` becomes
    the view of p's columns (loaded per-parameter tensors are copied in). ``out`` + ``views``: a D-vector
    scratch buffer and its per-parameter views (the step is written there, then added with one op)."""

    def __init__(self, opt: AdaTask, params: list[Tensor], rows: int | None):
        self.layout = FlatLayout.of(params)
        lead = () if rows is None else (rows,)
        self.bufs = {n: params[0].new_zeros(*lead, self.layout.total) for n in opt.buffers}
        for name, buf in self.bufs.items():
            for p, view in zip(params, self.layout.views(buf)):
                st = opt.state[p]
                if name in st:
                    view.copy_(st[name])
                st[name] = view
        for p in params:
            opt.state[p].setdefault("step", 0)
            if rows is not None:
                opt.state[p].setdefault("task_step", [0] * rows)
        self.out = params[0].new_empty(self.layout.total)
        self.views = self.layout.views(self.out)


class AdaTask(torch.optim.Optimizer):
    """Base class; use AdaTaskAdam / AdaTaskRMSprop / AdaTaskAdagrad or ``make_adatask(variant, ...)``.

    ``step(per_task_grads, reached=None)``: ``per_task_grads`` is the (K, D) matrix from
    ``per_task_gradients(losses, shared_params)`` (columns in the order of ``shared_params``), or a
    sequence of K sequences of per-parameter tensors (``None`` = task does not reach it). ``reached`` (K, P)
    booleans mark which task reaches which shared parameter (e.g. ``Sharing.reach_matrix()``); ``None``
    means every task reaches every shared parameter (or is read from the ``None`` entries).
    Task-specific parameters are stepped on their ``.grad``. ``record=True``: see the module docstring.
    """

    variant = ""
    buffers: tuple[str, ...] = ()

    def __init__(self, shared_params: Iterable[Tensor], task_params: Iterable[Tensor], n_tasks: int, *,
                 defaults: dict, missing: str = "skip", pcgrad: str | None = None,
                 generator: torch.Generator | None = None, record: bool = False):
        if n_tasks < 1:
            raise ConfigError(f"AdaTask n_tasks={n_tasks} must be >= 1")
        if missing not in MISSING:
            raise ConfigError(f"AdaTask missing={missing!r}: use skip (paper) or zero (official)")
        if pcgrad not in PCGRAD_ON:
            raise ConfigError(f"AdaTask pcgrad={pcgrad!r}: use None, 'gradients' or 'updates'")
        if defaults["lr"] < 0 or defaults["eps"] < 0 or defaults["weight_decay"] < 0:
            raise ConfigError("AdaTask lr, eps and weight_decay must be >= 0")
        shared, task = list(shared_params), list(task_params)
        groups = [{"params": shared, "role": "shared"}] if shared else []
        groups += [{"params": task, "role": "task"}] if task else []
        if not groups:
            raise ConfigError("AdaTask got no parameters; pass the shared and task-specific parameters")
        super().__init__(groups, defaults)
        self.n_tasks, self.missing, self.pcgrad, self.generator = n_tasks, missing, pcgrad, generator
        self.shared = shared
        self.layout = FlatLayout.of(shared)
        self.record = record
        self.last_update: Tensor | None = None  # (K, D) per-task updates Delta_k of the last step (record)
        self.last_grads: Tensor | None = None  # (K, D) gradients fed to the accumulators (record)
        self._flat: _Flat | None = None  # shared: (K, D) accumulators
        self._hflat: _Flat | None = None  # heads: (D_heads,) accumulators
        self._t: int | None = None  # the common task count while all are equal, else None

    # -- the per-variant rule on a gradient tensor (flat buffer or one parameter's), in place on the
    # accumulators ``bufs`` of the same shape; returns the normalised update u.
    def _rule(self, g: Tensor, bufs: dict[str, Tensor], bias: _Bias, group: dict) -> Tensor:
        raise NotImplementedError

    def accumulator(self) -> Tensor:
        """The (K, D) per-task squared-gradient accumulator of the shared parameters (v_k / G_k)."""
        return self._flat_state().bufs[self.buffers[-1]]

    def _flat_state(self) -> _Flat:
        if self._flat is None:
            self._flat = _Flat(self, self.shared, self.n_tasks)
            counts = {t for p in self.shared for t in self.state[p]["task_step"]}
            self._t = counts.pop() if len(counts) == 1 else None
        return self._flat

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._flat = self._hflat = None  # rebuilt (and re-viewed) from the loaded per-parameter tensors

    def state_dict(self) -> dict:
        sd = super().state_dict()  # per-parameter views -> contiguous copies, no shared storage
        sd["state"] = {i: {k: v.clone() if isinstance(v, Tensor) else (list(v) if isinstance(v, list) else v)
                           for k, v in st.items()} for i, st in sd["state"].items()}
        return sd

    def _as_matrix(self, per_task_grads, reached) -> tuple[Tensor, list[list[bool]] | None]:
        K, P = self.n_tasks, len(self.shared)
        if isinstance(per_task_grads, Tensor):
            G = per_task_grads
            if G.shape != (K, self.layout.total):
                raise ConfigError(f"per-task gradients have shape {tuple(G.shape)}, expected {(K, self.layout.total)}; "
                                  "compute them over the optimizer's shared parameters, in the same order")
        else:
            rows = list(per_task_grads)
            if len(rows) != K or any(len(r) != P for r in rows):
                raise ConfigError(f"per-task gradients must be {K} lists of {P} tensors (None where a task "
                                  "does not reach a parameter)")
            p0 = self.shared[0]
            G = torch.zeros(K, self.layout.total, dtype=p0.dtype, device=p0.device)
            for k, r in enumerate(rows):
                flatten(r, self.layout, out=G[k])
            found = [[g is not None for g in r] for r in rows]
            if reached is None and not all(all(r) for r in found):
                reached = found
            elif reached is not None:
                reached = [[bool(a) and b for a, b in zip(ra, rb)] for ra, rb in zip(_rows(reached), found)]
        if reached is not None:
            reached = _rows(reached)
            if len(reached) != K or any(len(r) != P for r in reached):
                raise ConfigError(f"`reached` must be {K} x {P} booleans (tasks x shared parameters)")
            if all(all(r) for r in reached):
                reached = None
        return G, reached

    @torch.no_grad()
    def step(self, per_task_grads: Tensor | Sequence[Sequence[Tensor | None]] | None = None,
             reached=None, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["role"] == "task":
                self._step_task_group(group)
            else:
                if per_task_grads is None:
                    raise ConfigError("AdaTask.step needs the per-task gradients of the shared parameters; "
                                      "pass per_task_gradients(losses, shared_params)")
                self._step_shared_group(group, *self._as_matrix(per_task_grads, reached))
        return loss

    def _step_task_group(self, group: dict) -> None:
        lr, wd, ps = group["lr"], group["weight_decay"], group["params"]
        if all(p.grad is not None for p in ps):  # fused: one flat buffer for all heads
            if self._hflat is None:
                self._hflat = _Flat(self, ps, None)
            states = [self.state[p] for p in ps]
            t = states[0]["step"] + 1
            if all(st["step"] == t - 1 for st in states):
                for st in states:
                    st["step"] = t
                fl = self._hflat
                g = torch.cat([p.grad.reshape(-1) for p in ps])
                if wd and group["decoupled_weight_decay"]:
                    torch._foreach_mul_(ps, 1 - lr * wd)
                elif wd:
                    g = g.add(torch.cat([p.detach().reshape(-1) for p in ps]), alpha=wd)
                fl.out.copy_(self._rule(g, fl.bufs, _Bias(t), group))
                torch._foreach_add_(ps, fl.views, alpha=-lr)
                return
        self._step_task_params(group)

    def _step_task_params(self, group: dict) -> None:
        """Heads with missing gradients or unequal step counts: one parameter at a time."""
        lr, wd = group["lr"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            st = self.state[p]
            if not st:
                st["step"] = 0
                st.update({n: torch.zeros_like(p) for n in self.buffers})
            st["step"] += 1
            g = p.grad
            if wd and group["decoupled_weight_decay"]:
                p.mul_(1 - lr * wd)
            elif wd:
                g = g.add(p, alpha=wd)
            p.add_(self._rule(g, {n: st[n] for n in self.buffers}, _Bias(st["step"]), group), alpha=-lr)

    def _advance(self, reached: list[list[bool]] | None) -> tuple[_Bias, list[int]]:
        """Step the counters; the bias corrections and the indices of the parameters that move."""
        K, states = self.n_tasks, [self.state[p] for p in self.shared]
        if reached is None and self._t is not None:
            self._t += 1
            for st in states:
                st["step"] += 1
                st["task_step"] = [self._t] * K
            return _Bias(self._t), list(range(len(states)))
        moving = []
        for i, st in enumerate(states):
            rows = [k for k in range(K) if reached is None or reached[k][i]]
            if rows:
                moving.append(i)
                st["step"] += 1
                st["task_step"] = [t + (k in rows) for k, t in enumerate(st["task_step"])]
        counts = [[st["task_step"][k] for st in states] for k in range(K)]
        flat = {t for row in counts for t in row}
        self._t = flat.pop() if len(flat) == 1 else None
        if self._t is not None and reached is None:
            return _Bias(self._t), moving
        return _Bias(None, counts, self.layout, self.shared[0]), moving

    def _step_shared_group(self, group: dict, G: Tensor, reached: list[list[bool]] | None) -> None:
        lr, wd, decoupled = group["lr"], group["weight_decay"], group["decoupled_weight_decay"]
        params = group["params"]
        if self.missing == "zero":
            reached = None  # official: every task's moments advance (zero gradient where missing)
        flat = self._flat_state().bufs
        bias, moving = self._advance(reached)
        if self.pcgrad == "gradients":
            G = pcgrad_project(G, self.generator)
        if wd and decoupled:
            torch._foreach_mul_([params[i] for i in moving], 1 - lr * wd)
        elif wd:  # L2 on each task's gradient: g_k + wd theta
            theta = torch.cat([p.detach().reshape(-1) for p in params])
            G = G + wd * theta
        if reached is None:
            U = self._rule(G, flat, bias, group)
        else:  # only the reached tasks' accumulators advance and add
            mask = torch.tensor(reached, device=G.device).repeat_interleave(
                torch.tensor(self.layout.numels, device=G.device), dim=1)
            new = {n: b.clone() for n, b in flat.items()}
            U = self._rule(G, new, bias, group)
            for n, b in flat.items():
                b.copy_(torch.where(mask, new[n], b))
            U = torch.where(mask, U, torch.zeros_like(U))
        if self.pcgrad == "updates":
            U = pcgrad_project(U, self.generator)
        if self.record:
            self.last_update, self.last_grads = U * -lr, G
        views = self._flat.views
        torch.sum(U, 0, out=self._flat.out)
        if len(moving) == len(params):
            torch._foreach_add_(params, views, alpha=-lr)
        else:
            torch._foreach_add_([params[i] for i in moving], [views[i] for i in moving], alpha=-lr)


def _rows(reached) -> list[list[bool]]:
    if isinstance(reached, Tensor):
        return reached.bool().tolist()
    return [[bool(x) for x in r] for r in reached]


class AdaTaskAdam(AdaTask):
    """Adam with AdaTask (official update; see the module docstring). State per shared parameter:
    ``exp_avg``, ``exp_avg_sq`` (K, *shape), ``step``, ``task_step`` (K ints)."""

    variant = "adam"
    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, shared_params, task_params, n_tasks: int, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, **kw):
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError(f"AdaTaskAdam betas={betas} must lie in [0, 1)")
        super().__init__(shared_params, task_params, n_tasks, defaults=dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay), **kw)

    def _rule(self, g, bufs, bias, group):
        b1, b2 = group["betas"]
        m, v = bufs["exp_avg"], bufs["exp_avg_sq"]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        den = v.sqrt().div_(bias.corr_sqrt(b2)).add_(group["eps"])  # sqrt(v) / sqrt(bc2) + eps
        return (m / bias.corr(b1)).div_(den)


class AdaTaskRMSprop(AdaTask):
    """RMSProp with AdaTask (paper Alg. 2): ``square_avg`` (K, *shape) per shared parameter."""

    variant = "rmsprop"
    buffers = ("square_avg",)

    def __init__(self, shared_params, task_params, n_tasks: int, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False, **kw):
        if not 0 <= alpha < 1:
            raise ConfigError(f"AdaTaskRMSprop alpha={alpha} must lie in [0, 1)")
        super().__init__(shared_params, task_params, n_tasks, defaults=dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay), **kw)

    def _rule(self, g, bufs, bias, group):
        a = bufs["square_avg"]
        a.mul_(group["alpha"]).addcmul_(g, g, value=1 - group["alpha"])
        return g / a.sqrt().add_(group["eps"])


class AdaTaskAdagrad(AdaTask):
    """AdaGrad with AdaTask (paper Alg. 2): ``sum`` (K, *shape) per shared parameter."""

    variant = "adagrad"
    buffers = ("sum",)

    def __init__(self, shared_params, task_params, n_tasks: int, lr: float = 1e-2, eps: float = 1e-10,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, **kw):
        super().__init__(shared_params, task_params, n_tasks, defaults=dict(
            lr=lr, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay), **kw)

    def _rule(self, g, bufs, bias, group):
        s = bufs["sum"]
        s.addcmul_(g, g, value=1.0)
        return g / s.sqrt().add_(group["eps"])


VARIANTS: dict[str, type[AdaTask]] = {"adam": AdaTaskAdam, "rmsprop": AdaTaskRMSprop, "adagrad": AdaTaskAdagrad}


def make_adatask(variant: str, shared_params, task_params, n_tasks: int, **kw) -> AdaTask:
    """The AdaTask optimizer named by a config value: ``"adam"`` (default), ``"rmsprop"`` or ``"adagrad"``."""
    cls = VARIANTS.get(variant)
    if cls is None:
        raise ConfigError(f"unknown AdaTask variant {variant!r}; use one of {', '.join(VARIANTS)}")
    return cls(shared_params, task_params, n_tasks, **kw)
