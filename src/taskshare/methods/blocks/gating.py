"""TAPS's gated layer and sparsity penalty, a building block any method may use (TAPS; PAR's TAPS units).

Per task t a gated layer computes with W + I_τ(s^t) · ΔW^t (straight-through gradient for the score); the
penalty is λ · R(s^t), R the official Σ|s|/52 or the size-weighted mean. The equations, the choices and the
official-code references are in the TAPS method's docstring (`taskshare.methods.taps`).
"""
from __future__ import annotations

import copy

import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.core import TaskTensors
from taskshare.errors import ConfigError, TaskshareError

TAU = 0.1
SCORE_INIT = 0.15
OFFICIAL_N = 52  # the official code's hard-coded normaliser (ResNet-50 has 53 convs)
PENALTIES = ("official", "size-weighted")
LR_SCHEDULES = ("constant", "cosine")
LAYER_TYPES: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d,
                                           "Conv3d": nn.Conv3d}
DEFAULT_LAYER_TYPES = ("Conv2d", "Linear")
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
TAPS_LEAVES = ("delta", "delta_bias", "score")

__all__ = ["GatedLayer", "wrap", "gate_layers", "gated_layers", "taps_slots", "layer_sizes", "scores",
           "active_layers", "penalty", "task_penalty", "task_tensors"]


# ------------------------------------------------------------------------------------------ the gate
class _StraightThroughGate(torch.autograd.Function):
    """Forward 1[s >= τ] as 0.0/1.0; backward passes the gradient straight through to s."""

    @staticmethod
    def forward(ctx, score: torch.Tensor, tau: float) -> torch.Tensor:
        return (score >= tau).to(score.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class GatedLayer(nn.Module):
    """Mixin of a gated Linear/Conv layer: base ``weight``/``bias`` plus ``delta``, ``delta_bias``, ``score``.

    A gated layer is the original module with its class swapped to ``Gated<Class>`` (a subclass of both this
    mixin and the original class), so parameter names stay ``<layer>.weight`` and isinstance checks hold.
    """

    taps_tau: float
    _taps_base: ClassVar[type[nn.Module]]

    def effective(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The task weight and bias: W + I(s)·ΔW (straight-through to s when the score is trained)."""
        w, b, d, db, s = self.weight, self.bias, self.delta, self.delta_bias, self.score
        if torch.is_grad_enabled() and s.requires_grad:
            g = _StraightThroughGate.apply(s, self.taps_tau).to(d.dtype)
            return w + g * d, (b + g * db if b is not None else None)
        if bool(s >= self.taps_tau):
            return w + d, (b + db if b is not None else None)
        return w, b

    def is_active(self) -> bool:
        return bool(self.score >= self.taps_tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.effective()
        return self._taps_apply(x, w, b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.taps_tau:g}"


def _apply_linear(self, x, w, b):
    return F.linear(x, w, b)


def _apply_conv(self, x, w, b):
    return self._conv_forward(x, w, b)


_GATED_CLASSES: dict[type, type] = {}


def _gated_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _GATED_CLASSES:
        apply = _apply_linear if issubclass(cls, nn.Linear) else _apply_conv
        _GATED_CLASSES[cls] = type(f"Gated{cls.__name__}", (GatedLayer, cls),
                                   {"_taps_apply": apply, "_taps_base": cls, "__module__": __name__})
    return _GATED_CLASSES[cls]


def _layer_classes(layer_types) -> tuple[type[nn.Module], ...]:
    names = (layer_types,) if isinstance(layer_types, str) else tuple(layer_types)
    bad = [n for n in names if n not in LAYER_TYPES]
    if bad or not names:
        raise ConfigError(f"layer type {bad[0] if bad else '(none)'!r} cannot be gated: choose from "
                          f"{', '.join(LAYER_TYPES)} (e.g. --set taps.layer_types=[Conv2d,Linear])")
    return tuple(LAYER_TYPES[n] for n in names)


def _matches(module: nn.Module, classes: tuple[type[nn.Module], ...]) -> bool:
    # subclasses count only when they keep the base forward (e.g. MHA's NonDynamicallyQuantizableLinear)
    return any(type(module) is c or (isinstance(module, c) and type(module).forward is c.forward) for c in classes)


def _under(name: str, prefixes) -> bool:
    return any(p is not None and (name == p or name.startswith(p + ".")) for p in prefixes)


def gate_layers(model: nn.Module, layer_types=DEFAULT_LAYER_TYPES, *, tau: float = TAU,
                score_init: float = SCORE_INIT, exclude=("head",)) -> list[str]:
    """Gate every layer of `layer_types` in `model` in place (not those under `exclude`); returns their names.

    The new ``delta``/``delta_bias`` start at 0 and ``score`` at `score_init`; all three are created frozen
    (they are the *base* values of TaskTensors slots; each task gets its own trainable copies).
    """
    classes = _layer_classes(layer_types)
    in_mha = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()}
    gated, skipped = [], []
    for name, module in list(model.named_modules()):
        if _under(name, exclude) or isinstance(module, GatedLayer) or not _matches(module, classes):
            continue
        if id(module) in in_mha:
            skipped.append(name)
            continue
        module.__class__ = _gated_class(type(module))
        w = module.weight
        module.register_parameter("delta", nn.Parameter(torch.zeros_like(w), requires_grad=False))
        bias = module.bias
        module.register_parameter("delta_bias", None if bias is None else
                                  nn.Parameter(torch.zeros_like(bias), requires_grad=False))
        module.register_parameter("score", nn.Parameter(torch.tensor(float(score_init), device=w.device),
                                                        requires_grad=False))
        module.taps_tau = float(tau)
        gated.append(name)
    if skipped:
        warnings.warn(f"TAPS cannot gate {', '.join(skipped)}: nn.MultiheadAttention reads these weights "
                      "directly; they stay shared (use an attention with Linear projections to gate them)",
                      stacklevel=2)
    return gated


def gated_layers(model: nn.Module) -> dict[str, GatedLayer]:
    """The gated layers of `model`, in network order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, GatedLayer)}


def taps_slots(model: nn.Module, head: str | None = "head") -> list[str]:
    """Slots of a gated model: every delta/delta_bias/score, every norm layer's tensors, the head's tensors."""
    slots: list[str] = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, GatedLayer):
            slots += [prefix + leaf for leaf in TAPS_LEAVES if getattr(m, leaf) is not None]
        elif isinstance(m, NORM_TYPES) and not _under(name, (head,)):
            slots += [prefix + n for n, t in [*m._parameters.items(), *m._buffers.items()] if t is not None]
    if head is not None:
        mod = model.get_submodule(head)
        slots += [f"{head}.{n}" for n, _ in [*mod.named_parameters(), *mod.named_buffers()]]
    return list(dict.fromkeys(slots))


def wrap(model: nn.Module, *, layer_types=DEFAULT_LAYER_TYPES, tau: float = TAU, score_init: float = SCORE_INIT,
         head: str | None = "head", freeze_base: bool = True) -> TaskTensors:
    """Gate `model` in place and return the TaskTensors over it (slots: see `taps_slots`).

    `head`: the qualified name of the per-task head module (not gated; None: no head). With `freeze_base`
    every shared parameter (base weights, embeddings, ...) gets requires_grad=False.
    """
    if head is not None:
        try:
            model.get_submodule(head)
        except AttributeError:
            raise ConfigError(f"{type(model).__name__} has no head module {head!r}: pass head=<module name> "
                              "or head=None") from None
    names = gate_layers(model, layer_types, tau=tau, score_init=score_init, exclude=(head,))
    if not names:
        raise ConfigError(f"{type(model).__name__} has no layer of types {', '.join(map(str, layer_types))} "
                          "outside the head to gate: choose other layer_types")
    tt = TaskTensors(model, taps_slots(model, head))
    if freeze_base:
        for p in tt.shared_parameters():
            p.requires_grad_(False)
    return tt


# ------------------------------------------------------------------------------------- scores, penalty
def task_tensors(source) -> TaskTensors:
    tt = getattr(source, "tt", source)
    if not isinstance(tt, TaskTensors):
        raise TaskshareError(f"expected a TAPS learner or TaskTensors, got {type(source).__name__}")
    return tt


def layer_sizes(model: nn.Module) -> dict[str, int]:
    """|W_i|: elements of each gated layer's weight plus bias (what its deltas add when active)."""
    return {n: m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
            for n, m in gated_layers(model).items()}


def scores(source, task: str) -> dict[str, float]:
    """Each gated layer's score for `task`."""
    tt = task_tensors(source)
    names = list(gated_layers(tt.model))
    ts = tt.tensors(task)
    values = torch.stack([ts[f"{n}.score"].detach().float() for n in names]).tolist() if names else []
    return dict(zip(names, values))


def active_layers(source, task: str) -> list[str]:
    """The gated layers whose delta is on for `task` (s >= τ, compared in the score's dtype as the forward does)."""
    tt = task_tensors(source)
    ts = tt.tensors(task)
    return [n for n, m in gated_layers(tt.model).items() if bool(ts[f"{n}.score"] >= m.taps_tau)]


def penalty(score_values: torch.Tensor, sizes: torch.Tensor, lambda_: float, mode: str = "official") -> torch.Tensor:
    """λ·R(s): ``official`` R = Σ|s_i| / 52; ``size-weighted`` R = Σ |W_i|·|s_i| / Σ |W_i|."""
    s = score_values.abs()
    if mode == "official":
        return s.sum() * (lambda_ / OFFICIAL_N)
    if mode == "size-weighted":
        weights = (sizes.double() / sizes.double().sum()).to(device=s.device, dtype=s.dtype)
        return (weights * s).sum() * lambda_
    raise ConfigError(f"penalty mode {mode!r} is unknown: choose one of {', '.join(PENALTIES)}")


def task_penalty(source, task: str, lambda_: float, mode: str = "official") -> torch.Tensor:
    """The penalty on `task`'s scores (differentiable with respect to them)."""
    tt = task_tensors(source)
    sizes = layer_sizes(tt.model)
    ts = tt.tensors(task)
    s = torch.stack([ts[f"{n}.score"] for n in sizes])
    return penalty(s, torch.tensor(list(sizes.values())), lambda_, mode)


def merged_model(source, task: str | None = None) -> nn.Module:
    """A plain copy of the network for `task` (default: the active one) with W + ΔW folded into each layer.

    Gated layers become their original class (nn.Conv2d, nn.Linear, ...) holding W + ΔW when active and W
    when not; norms and head are the task's. No gating overhead: it runs at the base model's speed and gives
    the gated model's outputs exactly. Parameters are frozen and the copy is in eval mode.
    """
    tt = task_tensors(source)
    task = tt.active if task is None else task
    with tt.use(task), torch.no_grad():
        model = copy.deepcopy(tt.model)
        for m in gated_layers(model).values():
            w, b = m.effective()
            for leaf in TAPS_LEAVES:
                del m._parameters[leaf]
            del m.taps_tau
            m.__class__ = m._taps_base
            m.weight = nn.Parameter(w)
            if b is not None:
                m.bias = nn.Parameter(b)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
