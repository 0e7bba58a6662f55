"""One multi-output optimisation step for any method in ``METHODS``, usable in any training loop.

    trainer = MultiTaskTrainer(model, {"a": mse, "b": ce}, "adatask", optimizer="adam", lr=1e-3)
    for x, ys in loader:
        losses = trainer.step(x, ys)        # {task: float}
    trainer.end_epoch()                      # DWA's epoch-average losses

On the first batch the sharing is detected from the autograd graph (``detect_sharing``; pass ``sharing=``
to override) and the optimizer is built (``prepare(x, ys)`` does this without stepping, e.g. before
attaching an LR scheduler to ``trainer.optimizer``). What each method does with the K losses L_k:

- ew / uw / dwa / gradnorm: one backward of the weighted sum sum_k w_k L_k (w = 1; UW's learned
  precisions; DWA's epoch weights; GradNorm's weights from per-task gradient norms on
  ``model.last_shared_parameters()``), then the base optimizer (``optimizer=`` adam | sgd | rmsprop | adagrad).
- pcgrad / mgda / cagrad: the K x D per-task gradients G of the shared parameters (``per_task_gradients``),
  the aggregator's D-vector written into the shared ``.grad``; each head gets its own task's gradient
  (backward of sum_k L_k restricted to the task-specific parameters, as in Sener & Koltun Alg. 2); then
  the base optimizer. ``mgda`` with ``ub=True`` is MGDA-UB: the weights come from the gradients w.r.t. the
  encoder output z and the shared parameters get the gradient of sum_k a_k L_k (one backward).
- adatask / adatask+pcgrad: G and the heads' gradient of sum_k L_k go to the AdaTask optimizer of the
  variant named by ``optimizer=`` (adam | rmsprop | adagrad).

``recorder=`` (an ``AURecorder``) receives each step's per-task parts of the gradient the optimizer gets, which
sum to it: the weighted losses' gradients w_k g_k for loss weighting, PCGrad's projected rows, MGDA's and
CAGrad's rows c_k g_k (``MethodSpec.split``; MGDA-UB: a_k g_k). It follows the base optimizer's lr /
momentum / betas; under AdaTask it records the optimizer's own per-task updates (any variant; after the
PCGrad projection for adatask+pcgrad) and accumulators (``AdaTask(record=True)``).

Data parallelism (``reducer=`` a ``taskshare.engine.distributed.GradReducer``; the caller sets the shard
sizes before each step): the per-task gradient matrix G is reduced across ranks *before* it is combined
(PCGrad / MGDA / CAGrad / AdaTask see the global per-task gradients), MGDA-UB reduces its K x K Gram
matrix, the loss-weighting methods and the heads reduce their ``.grad`` after the local backward (plain
data-parallel averaging), and the losses fed to DWA / GradNorm and returned are the global-batch means.
With float64 and no BatchNorm the parameters then equal the single-process run on the same global batch
(up to summation order; tests/test_multitask_ddp.py).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from taskshare.errors import ConfigError
from taskshare.methods.multioutput.adatask import VARIANTS, make_adatask
from taskshare.methods.multioutput.aggregators import (cagrad, cagrad_weights, mgda, mgda_ub_weights, mgda_weights,
                                                       mgda_weights_gram, pcgrad, pcgrad_project)
from taskshare.methods.multioutput.au import AURecorder
from taskshare.methods.multioutput.gradients import GRAD_MODES, choose_mode, per_task_gradients, write_grads
from taskshare.methods.multioutput.model import MultiOutputNet
from taskshare.methods.multioutput.sharing import Sharing, detect_sharing
from taskshare.methods.multioutput.weighting import DWA, GradNorm, UncertaintyWeighting

__all__ = ["METHODS", "METHOD_OPTIONS", "REGISTRY", "MethodSpec", "MultiTaskTrainer"]

def _equal(tr, L, Lg, losses):
    return torch.ones_like(L)


def _uw(tr, L, Lg, losses):
    return tr.weighting.weights().to(L)


def _dwa(tr, L, Lg, losses):
    w = tr.weighting.weights().to(L)
    tr.weighting.observe(Lg)
    return w


def _gradnorm(tr, L, Lg, losses):
    norms = tr._grads(losses, tr.model.last_shared_parameters()).norm(dim=1)
    return tr.weighting.update(Lg, norms).to(L)


@dataclass(frozen=True)
class MethodSpec:
    """A multi-output method: its family, its options with defaults, and the pieces the step calls.

    - ``loss-weighting``: ``weights(trainer, L, L_global, losses) -> w``, then one backward of
      ``total(trainer, L, w)`` (default sum_k w_k L_k); ``make_weighting(K, options)`` builds its state;
    - ``gradient``: ``aggregate(G, options, generator) -> d``, the direction written into the shared grads;
      ``split(G, options, generator) -> (d, parts)``, the same d plus the K per-task parts that sum to it
      (what the AU record splits the optimizer's update by; called instead of ``aggregate`` when recording);
    - ``adatask``: the per-task gradients go to the AdaTask optimizer (``options["pcgrad_on"]``: PCGrad first).
    """

    description: str
    family: str
    options: dict[str, Any] = field(default_factory=dict)
    make_weighting: Callable[[int, dict[str, Any]], Any] | None = None
    weights: Callable[..., Tensor] | None = None
    total: Callable[..., Tensor] | None = None
    aggregate: Callable[..., Tensor] | None = None
    split: Callable[..., tuple[Tensor, Tensor]] | None = None
    end_epoch: Callable[[Any], None] | None = None


def _rows(P: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of the rows, the rows): a direction made of per-task rows (PCGrad's projected gradients)."""
    return P.sum(0), P


def _weighted(w: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
    """(w @ G, the rows w_k g_k): a direction that combines the task gradients with coefficients w."""
    return w @ G, w[:, None] * G


REGISTRY: dict[str, MethodSpec] = {
    "ew": MethodSpec("equal weighting: one backward of the summed task losses", "loss-weighting", {},
                     weights=_equal),
    "uw": MethodSpec("uncertainty weighting (Kendall et al. 2018): learned task log-variances", "loss-weighting",
                     {"kinds": "regression"}, lambda K, o: UncertaintyWeighting(K, o["kinds"]), _uw,
                     total=lambda tr, L, w: tr.weighting(L)),
    "dwa": MethodSpec("dynamic weight average (Liu et al. 2019): weights from the last two epochs' loss ratios",
                      "loss-weighting", {"T": 2.0}, lambda K, o: DWA(K, o["T"]), _dwa,
                      end_epoch=lambda weighting: weighting.end_epoch()),
    "gradnorm": MethodSpec("GradNorm (Chen et al. 2018): weights balance gradient norms on the last shared layer",
                           "loss-weighting", {"alpha": 1.5, "lr": 0.025},
                           lambda K, o: GradNorm(K, o["alpha"], o["lr"]), _gradnorm),
    "pcgrad": MethodSpec("PCGrad (Yu et al. 2020): project out conflicting components of task gradients",
                         "gradient", {}, aggregate=lambda G, o, gen: pcgrad(G, gen),
                         split=lambda G, o, gen: _rows(pcgrad_project(G, gen))),
    "mgda": MethodSpec("MGDA (Sener & Koltun 2018): min-norm combination of task gradients (ub=True: MGDA-UB)",
                       "gradient", {"ub": False, "normalize": "none"},
                       aggregate=lambda G, o, gen: mgda(G, o["normalize"]),
                       split=lambda G, o, gen: _weighted(mgda_weights(G, o["normalize"]), G)),
    "cagrad": MethodSpec("CAGrad (Liu et al. 2021): conflict-averse direction near the mean gradient", "gradient",
                         {"c": 0.5, "rescale": 0, "solver": "exact"},
                         aggregate=lambda G, o, gen: cagrad(G, o["c"], o["rescale"], o["solver"]),
                         split=lambda G, o, gen: _weighted(cagrad_weights(G, o["c"], o["rescale"], o["solver"]), G)),
    "adatask": MethodSpec("AdaTask (Yang et al. 2023): per-task adaptive accumulators for shared parameters",
                          "adatask", {"missing": "skip"}),
    "adatask+pcgrad": MethodSpec("AdaTask on PCGrad-projected task gradients", "adatask",
                                 {"missing": "skip", "pcgrad_on": "gradients"}),
}
METHODS: dict[str, str] = {name: spec.description for name, spec in REGISTRY.items()}
METHOD_OPTIONS: dict[str, dict[str, Any]] = {name: dict(spec.options) for name, spec in REGISTRY.items()}

_BASE = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop,
         "adagrad": torch.optim.Adagrad}


class MultiTaskTrainer:
    def __init__(self, model: MultiOutputNet, loss_fns: Mapping[str, Callable[[Tensor, Tensor], Tensor]],
                 method: str = "ew", *, optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                 options: Mapping[str, Any] | None = None, grad_mode: str = "auto",
                 sharing: Sharing | None = None, seed: int = 0, recorder: AURecorder | None = None,
                 momentum: float = 0.0, reducer=None):
        if method not in METHODS:
            raise ConfigError(f"unknown multi-task method {method!r}; use one of {', '.join(METHODS)}")
        self.spec = REGISTRY[method]
        adatask = self.spec.family == "adatask"
        if adatask and optimizer not in VARIANTS:
            raise ConfigError(f"AdaTask variant {optimizer!r} unknown; use one of {', '.join(VARIANTS)}")
        if not adatask and optimizer not in _BASE:
            raise ConfigError(f"unknown optimizer {optimizer!r}; use one of {', '.join(_BASE)}")
        if grad_mode not in GRAD_MODES:
            raise ConfigError(f"unknown grad_mode {grad_mode!r}; use one of {', '.join(GRAD_MODES)}")
        if set(loss_fns) != set(model.tasks):
            raise ConfigError(f"loss_fns name tasks {sorted(loss_fns)} but the model's heads are "
                              f"{sorted(model.tasks)}; give one loss function per head")
        opts = dict(METHOD_OPTIONS[method])
        for k, v in (options or {}).items():
            if k not in opts:
                known = ", ".join(opts) or "none"
                raise ConfigError(f"unknown option {k!r} for method {method}; known options: {known}")
            opts[k] = v
        self.model, self.loss_fns, self.method, self.opts = model, dict(loss_fns), method, opts
        self.tasks = model.tasks
        self.optimizer_name, self.lr, self.weight_decay, self.momentum = optimizer, lr, weight_decay, momentum
        self.reducer = reducer
        self.grad_mode = choose_mode(model) if grad_mode == "auto" else grad_mode
        self.sharing, self.recorder = sharing, recorder
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.last_weights: list[float] | None = None
        K = len(self.tasks)
        make = self.spec.make_weighting
        self.weighting = make(K, opts) if make is not None else None
        if isinstance(self.weighting, nn.Module):  # learned weights live next to the model
            p = next(model.parameters())
            self.weighting.to(device=p.device, dtype=p.dtype)

    # ------------------------------------------------------------ setup

    def _forward(self, x: Tensor, targets: Mapping[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        z = self.model.encode(x)
        outs = self.model.decode(z)
        losses = [self.loss_fns[t](outs[t], targets[t]) for t in self.tasks]
        for t, loss in zip(self.tasks, losses):
            if loss.dim() != 0:
                raise ConfigError(f"loss of task {t!r} has shape {tuple(loss.shape)}; return a scalar (reduce it)")
        return z, losses

    def _build(self, losses: list[Tensor]) -> None:
        if self.sharing is None:
            self.sharing = detect_sharing(self.model, dict(zip(self.tasks, losses)))
        self.shared = self.sharing.shared_params(self.model)
        self.task_params = self.sharing.task_params(self.model)
        if self.spec.family != "loss-weighting" and not self.shared:
            raise ConfigError(f"{self.method} needs shared parameters but no parameter is reached by two tasks; "
                              "check the model or pass sharing=")
        kw = dict(lr=self.lr, weight_decay=self.weight_decay)
        if self.spec.family == "adatask":
            pc = self.opts.get("pcgrad_on")
            self.optimizer = make_adatask(self.optimizer_name, self.shared, self.task_params, len(self.tasks),
                                          missing=self.opts["missing"], pcgrad=pc, generator=self.generator, **kw)
        else:
            extra = list(self.weighting.parameters()) if isinstance(self.weighting, nn.Module) else []
            if self.optimizer_name == "sgd" and self.momentum:
                kw["momentum"] = self.momentum
            self.optimizer = _BASE[self.optimizer_name](self.shared + self.task_params + extra, **kw)

    def prepare(self, x: Tensor, targets: Mapping[str, Tensor]) -> Sharing:
        """Detect the sharing on one batch and build ``self.optimizer`` without stepping."""
        if self.optimizer is None:
            self._build(self._forward(x, targets)[1])
        return self.sharing

    # ------------------------------------------------------------ the step

    def _grads(self, losses: list[Tensor], params: list[Tensor], retain_graph: bool = True) -> Tensor:
        """Per-task gradients; under data parallelism the global (reduced) matrix."""
        G = per_task_gradients(losses, params, self.grad_mode, retain_graph=retain_graph)
        return G if self.reducer is None else self.reducer.mean_(G)

    def _sync_grads(self, params: list[Tensor]) -> None:
        if self.reducer is not None:
            self.reducer.grads_(params)

    def _heads_backward(self, losses: list[Tensor]) -> None:
        if self.task_params:
            torch.stack(losses).sum().backward(inputs=self.task_params)
            self._sync_grads(self.task_params)

    def _mgda_ub(self, losses: list[Tensor], z: Tensor, L: Tensor) -> Tensor:
        R = per_task_gradients(losses, [z], self.grad_mode, retain_graph=True)
        if self.reducer is None:
            return mgda_ub_weights(R, self.opts["normalize"]).to(L)
        # global R = the ranks' R_r (each scaled by n_r / N) side by side: its Gram is the weighted sum
        M = R.double() @ R.double().T
        M = self.reducer.sum_(M * self.reducer.weight ** 2)
        return mgda_weights_gram(M, self.opts["normalize"]).to(L)

    def step(self, x: Tensor, targets: Mapping[str, Tensor]) -> dict[str, float]:
        """One optimisation step on the batch; returns each task's loss."""
        z, losses = self._forward(x, targets)
        if self.optimizer is None:
            self._build(losses)
        self.optimizer.zero_grad(set_to_none=True)
        L = torch.stack(losses)
        Lg = L.detach().clone() if self.reducer is None else self.reducer.mean_(L.detach().clone())
        spec, G = self.spec, None
        if spec.family == "loss-weighting":
            w = spec.weights(self, L, Lg, losses)
            if self.recorder is not None and self.shared:
                G = self._grads(losses, self.shared) * w[:, None]
            total = spec.total(self, L, w) if spec.total is not None else (w * L).sum()
            total.backward()
            self._sync_grads([p for g in self.optimizer.param_groups for p in g["params"]])
            self.optimizer.step()
        elif spec.family == "gradient":
            if self.opts.get("ub"):  # MGDA-UB: weights from the gradients w.r.t. the representation
                a = self._mgda_ub(losses, z, L)
                (a * L).sum().backward(inputs=self.shared, retain_graph=True)
                self._sync_grads(self.shared)
                w = a
                if self.recorder is not None:  # the update's per-task parts a_k g_k
                    G = self._grads(losses, self.shared) * a.to(L)[:, None]
            else:
                G = self._grads(losses, self.shared)
                if self.recorder is not None and spec.split is not None:
                    d, G = spec.split(G, self.opts, self.generator)  # G: the parts the AU record splits by
                else:
                    d = spec.aggregate(G, self.opts, self.generator)
                write_grads(self.shared, d)
                w = None
            self._heads_backward(losses)
            self.optimizer.step()
        else:
            G = self._grads(losses, self.shared, retain_graph=bool(self.task_params))
            self._heads_backward(losses)
            self.optimizer.record = self.recorder is not None
            self.optimizer.step(G, self.sharing.reach_matrix())
            w = None
        self.last_weights = None if w is None else w.detach().tolist()
        if self.recorder is not None and G is not None:
            self._record(G)
        return dict(zip(self.tasks, Lg.tolist()))

    def _record(self, G: Tensor) -> None:
        """AU: the AdaTask optimizer's applied per-task updates, else the split of the base optimizer's."""
        opt = self.optimizer
        if self.spec.family == "adatask":
            self.recorder.update(opt.last_grads, delta=opt.last_update, vk=opt.accumulator())
        else:
            self.recorder.follow(opt)
            self.recorder.update(G)

    def end_epoch(self) -> None:
        """Close a training epoch (DWA uses the epoch's average losses); a no-op for other methods."""
        if self.spec.end_epoch is not None:
            self.spec.end_epoch(self.weighting)

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        if self.optimizer is None:
            raise ConfigError("nothing to save before the first step; call prepare(x, targets) or step first")
        ws = self.weighting.state_dict() if self.weighting is not None else None
        return {"optimizer": self.optimizer.state_dict(), "weighting": ws, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is None:
            raise ConfigError("build the optimizer before loading: call prepare(x, targets) first")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.weighting is not None:
            self.weighting.load_state_dict(state["weighting"])
        if state.get("generator") is not None:  # PCGrad's random task order
            self.generator.set_state(state["generator"])
