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


def _pow_bc(beta: float, steps: list[int], like: Tensor) -> Tensor | float:
    """1 - beta^t, a float when all rows share t, else shaped (rows, 1, ..., 1)."""
    if len(set(steps)) == 1:
        return 1.0 - beta ** steps[0]
    vals = [1.0 - beta ** t if t > 0 else 1.0 for t in steps]
    return torch.tensor(vals, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


class AdaTask(torch.optim.Optimizer):
    """Base class; use AdaTaskAdam / AdaTaskRMSprop / AdaTaskAdagrad or ``make_adatask(variant, ...)``.

    ``step(per_task_grads, reached=None)``: ``per_task_grads`` is the (K, D) matrix from
    ``per_task_gradients(losses, shared_params)`` (columns in the order of ``shared_params``), or a
    sequence of K sequences of per-parameter tensors (``None`` = task does not reach it). ``reached`` (K, P)
    booleans mark which task reaches which shared parameter (e.g. ``Sharing.reach_matrix()``); ``None``
    means every task reaches every shared parameter (or is read from the ``None`` entries).
    Task-specific parameters are stepped on their ``.grad``.
    """

    variant = ""

    def __init__(self, shared_params: Iterable[Tensor], task_params: Iterable[Tensor], n_tasks: int, *,
                 defaults: dict, missing: str = "skip", pcgrad: str | None = None,
                 generator: torch.Generator | None = None):
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

    # -- per-variant rules. g: (rows, *shape) gradients; buffers have the same leading dim. Return updates.
    def _init_state(self, p: Tensor, rows: int | None) -> dict:
        raise NotImplementedError

    def _update(self, g: Tensor, state: dict, steps: list[int], group: dict) -> Tensor:
        raise NotImplementedError

    # -- helpers
    def _state(self, p: Tensor, rows: int | None) -> dict:
        st = self.state[p]
        if not st:
            st["step"] = 0
            if rows is not None:
                st["task_step"] = [0] * rows
            st.update(self._init_state(p, rows))
        return st

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
        lr, wd = group["lr"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            st = self._state(p, None)
            st["step"] += 1
            g = p.grad
            if wd and group["decoupled_weight_decay"]:
                p.mul_(1 - lr * wd)
            elif wd:
                g = g.add(p, alpha=wd)
            u = self._update(g.unsqueeze(0), {k: v.unsqueeze(0) if isinstance(v, Tensor) else v
                                                for k, v in st.items()}, [st["step"]], group)
            p.add_(u[0], alpha=-lr)

    def _step_shared_group(self, group: dict, G: Tensor, reached: list[list[bool]] | None) -> None:
        lr, wd, K = group["lr"], group["weight_decay"], self.n_tasks
        if self.missing == "zero":
            reached = None  # official: every task's moments advance (zero gradient where missing)
        if self.pcgrad == "gradients":
            G = pcgrad_project(G, self.generator)
        U = torch.zeros_like(G) if self.pcgrad == "updates" else None
        outs = self.layout.views(U) if U is not None else [None] * len(group["params"])
        for i, (p, g, u_out) in enumerate(zip(group["params"], self.layout.views(G), outs)):
            rows = list(range(K)) if reached is None else [k for k in range(K) if reached[k][i]]
            if not rows:
                continue
            st = self._state(p, K)
            st["step"] += 1
            if wd and group["decoupled_weight_decay"]:
                p.mul_(1 - lr * wd)
            if len(rows) == K:
                st["task_step"] = [t + 1 for t in st["task_step"]]
                if wd and not group["decoupled_weight_decay"]:
                    g = g + wd * p
                u = self._update(g, st, st["task_step"], group)
            else:  # only the reached tasks' accumulators advance
                for k in rows:
                    st["task_step"][k] += 1
                idx = torch.tensor(rows, device=p.device)
                sub = {k: v.index_select(0, idx) if isinstance(v, Tensor) else v for k, v in st.items()}
                gr = g.index_select(0, idx)
                if wd and not group["decoupled_weight_decay"]:
                    gr = gr + wd * p
                ur = self._update(gr, sub, [st["task_step"][k] for k in rows], group)
                for k, v in sub.items():
                    if isinstance(v, Tensor):
                        st[k].index_copy_(0, idx, v)
                u = torch.zeros_like(g).index_copy_(0, idx, ur)
            if u_out is not None:
                u_out.copy_(u)
            else:
                p.add_(u.sum(0), alpha=-lr)
        if U is not None:
            step = pcgrad_project(U, self.generator).sum(0)
            for p, s in zip(group["params"], self.layout.views(step)):
                p.add_(s, alpha=-lr)


def _rows(reached) -> list[list[bool]]:
    if isinstance(reached, Tensor):
        return reached.bool().tolist()
    return [[bool(x) for x in r] for r in reached]


class AdaTaskAdam(AdaTask):
    """Adam with AdaTask (official update; see the module docstring). State per shared parameter:
    ``exp_avg``, ``exp_avg_sq`` (K, *shape), ``step``, ``task_step`` (K ints)."""

    variant = "adam"

    def __init__(self, shared_params, task_params, n_tasks: int, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, **kw):
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError(f"AdaTaskAdam betas={betas} must lie in [0, 1)")
        super().__init__(shared_params, task_params, n_tasks, defaults=dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay), **kw)

    def _init_state(self, p, rows):
        shape = (rows, *p.shape) if rows is not None else p.shape
        return {"exp_avg": p.new_zeros(shape), "exp_avg_sq": p.new_zeros(shape)}

    def _update(self, g, state, steps, group):
        b1, b2 = group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = _pow_bc(b1, steps, m), _pow_bc(b2, steps, m)
        sq2 = math.sqrt(bc2) if isinstance(bc2, float) else bc2.sqrt()
        return (m / bc1) / (v.sqrt() / sq2 + group["eps"])


class AdaTaskRMSprop(AdaTask):
    """RMSProp with AdaTask (paper Alg. 2): ``square_avg`` (K, *shape) per shared parameter."""

    variant = "rmsprop"

    def __init__(self, shared_params, task_params, n_tasks: int, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False, **kw):
        if not 0 <= alpha < 1:
            raise ConfigError(f"AdaTaskRMSprop alpha={alpha} must lie in [0, 1)")
        super().__init__(shared_params, task_params, n_tasks, defaults=dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay), **kw)

    def _init_state(self, p, rows):
        return {"square_avg": p.new_zeros((rows, *p.shape) if rows is not None else p.shape)}

    def _update(self, g, state, steps, group):
        a = state["square_avg"]
        a.mul_(group["alpha"]).addcmul_(g, g, value=1 - group["alpha"])
        return g / (a.sqrt() + group["eps"])


class AdaTaskAdagrad(AdaTask):
    """AdaGrad with AdaTask (paper Alg. 2): ``sum`` (K, *shape) per shared parameter."""

    variant = "adagrad"

    def __init__(self, shared_params, task_params, n_tasks: int, lr: float = 1e-2, eps: float = 1e-10,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, **kw):
        super().__init__(shared_params, task_params, n_tasks, defaults=dict(
            lr=lr, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay), **kw)

    def _init_state(self, p, rows):
        return {"sum": p.new_zeros((rows, *p.shape) if rows is not None else p.shape)}

    def _update(self, g, state, steps, group):
        s = state["sum"]
        s.addcmul_(g, g, value=1.0)
        return g / (s.sqrt() + group["eps"])


VARIANTS: dict[str, type[AdaTask]] = {"adam": AdaTaskAdam, "rmsprop": AdaTaskRMSprop, "adagrad": AdaTaskAdagrad}


def make_adatask(variant: str, shared_params, task_params, n_tasks: int, **kw) -> AdaTask:
    """The AdaTask optimizer named by a config value: ``"adam"`` (default), ``"rmsprop"`` or ``"adagrad"``."""
    cls = VARIANTS.get(variant)
    if cls is None:
        raise ConfigError(f"unknown AdaTask variant {variant!r}; use one of {', '.join(VARIANTS)}")
    return cls(shared_params, task_params, n_tasks, **kw)
