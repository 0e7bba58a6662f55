"""Allocation units smaller than an expert (beyond the paper): an expert's slot layouts and their conversion.

PAR (Wang et al., CVPR 2023) allocates a whole new expert for a task that is not related enough to reuse
one. With ``par.unit=patch`` or ``par.unit=taps`` the task instead gets a small unit on the most related
expert (see `learner.py`). The units live in the expert's own `TaskTensors`, whose *layout* (which tensors are
per-task slots) grows when the first unit lands on it:

=========  ==================================================================================
layout     slots of every task on the expert
=========  ==================================================================================
expert     the head (+ the BN running statistics with ``bn="task"``): the paper's expert
patch      the head + every BatchNorm's scale, bias and running statistics (a scale-bias+head
           model patch, `taskshare.methods.patches`)
taps       the patch slots + each convolution's TAPS ``delta`` and ``score`` (the expert's
           convolutions are gated in place by `taskshare.methods.blocks.gating.gate_layers`)
=========  ==================================================================================

Each layout holds the previous one's slots. `convert` rebuilds an expert's TaskTensors with a larger
layout: every existing task keeps its tensors' values, and a new slot starts from the shared value that every
task was using (TAPS scores at 0, i.e. no delta), so every existing task computes exactly the same function;
the new slots are frozen for those tasks. After the conversion no task can change another task's BatchNorm
(its scale, bias and statistics are per task); the convolution weights stay shared.
"""
from __future__ import annotations

import torch
from torch import nn

from taskshare.core import TaskTensors
from taskshare.methods.par.expert import bn_buffer_names
from taskshare.methods.blocks.patching import patch_slots
from taskshare.methods.blocks.gating import DEFAULT_LAYER_TYPES, SCORE_INIT, TAU, gate_layers, gated_layers, taps_slots
from taskshare.models import HEAD_SLOTS

LAYOUTS = ("expert", "patch", "taps")   # each includes the previous one's slots
UNIT_KINDS = ("patch", "taps")
TAPS_LEAVES = ("delta", "delta_bias", "score")


def leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def is_taps_slot(name: str) -> bool:
    return leaf(name) in TAPS_LEAVES


def layout_slots(net: nn.Module, layout: str, bn_task: bool) -> list[str]:
    """The slot names of `layout` on `net` (for ``taps``, `net` must be gated already)."""
    if layout == "expert":
        return list(HEAD_SLOTS) + (bn_buffer_names(net) if bn_task else [])
    if layout == "patch":
        return patch_slots(net, "scale-bias+head")
    if layout == "taps":
        return taps_slots(net, "head")
    raise ValueError(f"unknown expert layout {layout!r}: one of {', '.join(LAYOUTS)}")


def gate(net: nn.Module) -> None:
    """Gate every convolution of an expert (not its head) with TAPS deltas and scores, in place (idempotent)."""
    if not gated_layers(net):
        gate_layers(net, DEFAULT_LAYER_TYPES, tau=TAU, score_init=SCORE_INIT, exclude=("head",))


def convert(net: nn.Module, tt: TaskTensors, layout: str, bn_task: bool) -> TaskTensors:
    """A TaskTensors over `net` with `layout`'s slots holding `tt`'s tasks, each computing the same function.

    A slot that is new for a task takes the value that task used (the shared tensor); TAPS scores take 0
    (< tau: the delta is off). New slots are frozen; the trainable flags of the old slots are kept.
    """
    tt.activate(None)
    if layout == "taps":
        gate(net)
    new = TaskTensors(net, layout_slots(net, layout, bn_task))
    base = new.base_tensors()
    for task in tt.tasks:
        old = tt.tensors(task)
        init = {n: old[n] if n in old else torch.zeros_like(base[n]) if leaf(n) == "score" else base[n]
                for n in new.slots}
        new.add_task(task, init, trainable=[n for n, t in old.items() if t.requires_grad])
    return new


def unit_trainable(tt: TaskTensors, unit: str) -> list[str]:
    """The slots a unit trains: the head and every BN scale/bias (+ the TAPS deltas and scores for ``taps``)."""
    out = []
    for n in tt.slots:
        if not tt.is_param(n):
            continue  # BN statistics: updated by train-mode BN, not by the optimizer
        if is_taps_slot(n):
            if unit == "taps":
                out.append(n)
        else:
            out.append(n)
    return out


def kd_groups(tt: TaskTensors, tasks: list[str]) -> list[tuple[str, list[str]]]:
    """`tasks` grouped by equal non-head tensors (they compute the same features): [(representative, members)]."""
    groups: list[tuple[str, list[str]]] = []
    for p in tasks:
        body = {n: t for n, t in tt.tensors(p).items() if n not in HEAD_SLOTS}
        for rep, members in groups:
            other = tt.tensors(rep)
            if all(torch.equal(t, other[n]) for n, t in body.items()):
                members.append(p)
                break
        else:
            groups.append((p, [p]))
    return groups
