"""Model patches as a building block any method may use (model patches; PAR's patch units): which tensors of
a network form a patch of given kinds (`patch_slots`), their counts, and BN folding for export.

Kinds: ``head``, ``scale-bias`` (every normalization layer's affine scale and bias, plus BatchNorm running
statistics as per-task buffers), ``bias``, ``depthwise`` (depthwise convolutions), ``full``. The paper and
the choices are in `taskshare.methods.patches`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from taskshare.core import TaskTensors, save_task
from taskshare.errors import ConfigError
from taskshare.models import TaskNet

__all__ = ["BN_STATS", "KINDS", "NORMS", "available_kinds", "bn_stat_slots", "count_patch", "find_head",
           "folded_bn", "is_depthwise", "kind_slots", "parse_kinds", "patch_slots", "save_patch"]

KINDS = ("head", "scale-bias", "bias", "depthwise", "full")
NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
HEAD_NAMES = ("head", "classifier", "fc")
_WHAT = {"head": "head (a module named head, classifier or fc)", "scale-bias": "normalization layers",
         "bias": "bias terms", "depthwise": "depthwise convolutions", "full": "parameters"}


def parse_kinds(spec: str | Iterable[str]) -> tuple[str, ...]:
    """'scale-bias+depthwise+head' -> ('scale-bias', 'depthwise', 'head'); unknown names are a ConfigError."""
    parts = spec.split("+") if isinstance(spec, str) else list(spec)
    kinds = tuple(dict.fromkeys(p.strip().lower() for p in parts))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"unknown patch kind {bad[0] if bad else ''!r} in {spec!r}: use {', '.join(KINDS)} "
                          "joined by '+', e.g. scale-bias+head")
    return kinds


def is_depthwise(m: nn.Module) -> bool:
    return (isinstance(m, _ConvNd) and m.groups > 1 and m.groups == m.in_channels
            and m.out_channels % m.groups == 0)


def find_head(model: nn.Module) -> str | None:
    """Qualified name of the last layer: the module named head/classifier/fc (its last Linear if a container)."""
    for attr in HEAD_NAMES:
        mod = getattr(model, attr, None)
        if isinstance(mod, nn.Module) and any(True for _ in mod.parameters()):
            if isinstance(mod, (nn.Linear, _ConvNd)):
                return attr
            linears = [n for n, m in mod.named_modules() if isinstance(m, (nn.Linear, _ConvNd))]
            if linears:
                return f"{attr}.{linears[-1]}"
    return None


def _own(module: nn.Module, prefix: str, params: bool = True, buffers: bool = True,
         only: Sequence[str] | None = None) -> list[str]:
    names = []
    if params:
        names += [n for n, p in module._parameters.items() if p is not None and (only is None or n in only)]
    if buffers:
        names += [n for n, b in module._buffers.items() if b is not None and (only is None or n in only)]
    return [f"{prefix}.{n}" if prefix else n for n in names]


def kind_slots(model: nn.Module, kind: str) -> tuple[list[str], int]:
    """The slot names of one patch kind on `model` and how many layers they cover."""
    head = find_head(model) if kind == "head" else None
    slots, layers = [], 0
    for prefix, m in model.named_modules():
        if kind == "scale-bias" and isinstance(m, NORMS):
            mine = _own(m, prefix, only=("weight", "bias") + (BN_STATS if isinstance(m, _BatchNorm) else ()))
        elif kind == "bias":
            mine = _own(m, prefix, buffers=False, only=("bias",))
        elif kind == "depthwise" and is_depthwise(m):
            mine = _own(m, prefix, buffers=False)
        elif kind == "head" and head is not None and prefix == head:
            mine = _own(m, prefix, buffers=False)
        elif kind == "full":
            mine = _own(m, prefix)
        else:
            continue
        if mine:
            slots += mine
            layers += 1 if (kind != "full" or any(True for _ in m.parameters(recurse=False))) else 0
    return slots, layers


def available_kinds(model: nn.Module) -> list[str]:
    return [k for k in KINDS if kind_slots(model, k)[0]]


def patch_slots(model: nn.Module, kinds: str | Iterable[str]) -> list[str]:
    """The task-specific slots (parameter and buffer names) of the patch `kinds`, in model order.

    An unknown kind, or one the model does not have (depthwise on an MLP), is a ConfigError.
    """
    chosen = parse_kinds(kinds)
    found: dict[str, None] = {}
    for kind in chosen:
        slots, _ = kind_slots(model, kind)
        if not slots:
            what = type(model.backbone if isinstance(model, TaskNet) else model).__name__
            raise ConfigError(f"patch kind {kind!r} does not apply to {what}: it has no "
                              f"{_WHAT[kind]}; its patch kinds are {'+'.join(available_kinds(model)) or 'none'}")
        found.update(dict.fromkeys(slots))
    order = {n: i for i, n in enumerate(kind_slots(model, "full")[0])}
    return sorted(found, key=lambda n: order.get(n, len(order)))


def bn_stat_slots(model: nn.Module) -> list[str]:
    """Running statistics (mean, var, num_batches_tracked) of every BatchNorm."""
    return [s for p, m in model.named_modules() if isinstance(m, _BatchNorm)
            for s in _own(m, p, params=False, only=BN_STATS)]


def count_patch(model: nn.Module, kinds: str | Iterable[str]) -> dict[str, dict[str, int]]:
    """Per kind and in total (the union): parameters, buffers (BN statistics) and layers a task adds."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    params = {n for n, _ in model.named_parameters()}
    out: dict[str, dict[str, int]] = {}
    union: set[str] = set()
    for kind in parse_kinds(kinds):
        slots, layers = kind_slots(model, kind)
        if not slots:
            patch_slots(model, kind)  # raises the ConfigError
        union.update(slots)
        out[kind] = {"params": sum(tensors[s].numel() for s in slots if s in params),
                     "buffers": sum(tensors[s].numel() for s in slots if s not in params), "layers": layers}
    out["total"] = {"params": sum(tensors[s].numel() for s in union if s in params),
                    "buffers": sum(tensors[s].numel() for s in union if s not in params),
                    "layers": len({s.rsplit(".", 1)[0] for s in union})}
    return out


def folded_bn(tt: TaskTensors, task: str) -> dict[str, torch.Tensor]:
    """`task`'s BN slots with the statistics folded into the scale-bias patch (see module docstring)."""
    tensors, out = tt.tensors(task), {}
    for prefix, m in tt.model.named_modules():
        mean = f"{prefix}.running_mean" if prefix else "running_mean"
        if not isinstance(m, _BatchNorm) or mean not in tensors:
            continue
        w, b = (f"{prefix}.weight", f"{prefix}.bias") if prefix else ("weight", "bias")
        if w not in tensors or b not in tensors:
            raise ConfigError(f"fold_bn: {prefix}'s statistics are per task but its scale/bias are shared, so "
                              "they cannot absorb them; export without fold_bn or use a scale-bias patch")
        var = tensors[f"{prefix}.running_var" if prefix else "running_var"]
        # torch's eval-BN arithmetic (alpha = rsqrt(var + eps) w, beta = b - mu alpha, in the tensors' dtype),
        # and statistics with rsqrt(var' + eps) == 1 exactly: the folded layer computes the same numbers
        gamma = torch.rsqrt(var + m.eps) * tensors[w]
        out[w] = gamma.detach()
        out[b] = torch.addcmul(tensors[b], tensors[mean], gamma, value=-1).detach()
        out[mean] = torch.zeros_like(tensors[mean])
        out[mean.replace("running_mean", "running_var")] = torch.ones_like(var) - m.eps
    if not out:
        raise ConfigError("fold_bn: this patch has no per-task BatchNorm statistics to fold; export without fold_bn")
    return out


def save_patch(tt: TaskTensors, task: str, path: str | Path, *, fold_bn: bool = False,
               meta: dict[str, Any] | None = None) -> int:
    """Save `task`'s patch (only its tensors, BN statistics included) via `core.save_task`; bytes written.

    ``fold_bn=True`` writes the deployment form (statistics folded into scale/bias); `load_task` of it gives
    the same eval outputs as the unfolded patch (bit-identical on CPU).
    """
    meta = dict(meta or {})
    if not fold_bn:
        return save_task(tt, task, path, meta=meta)
    folded, live = folded_bn(tt, task), tt.tensors(task)
    backup = {n: live[n].detach().clone() for n in folded}
    with torch.no_grad():
        try:
            for n, v in folded.items():
                live[n].copy_(v)
            return save_task(tt, task, path, meta={**meta, "bn_folded": True})
        finally:
            for n, v in backup.items():
                live[n].copy_(v)
