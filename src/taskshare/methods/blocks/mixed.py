"""Mixed-task batches: every sample with its own task's patch in one forward (model patches, `TaskModel`;
see `taskshare.methods.patches`)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from taskshare.core import TaskTensors
from taskshare.errors import TaskshareError

__all__ = ["TaskStacks", "mixed_forward", "stack_tasks"]

@dataclasses.dataclass
class TaskStacks:
    """Every slot's per-task values stacked along a new dim 0, for `mixed_forward`."""

    tasks: list[str]
    values: dict[str, torch.Tensor]      # slot -> (T, ...)
    rows: dict[str, torch.Tensor]        # ragged slots (heads of different sizes) -> each task's real rows


def stack_tasks(tt: TaskTensors, tasks: Sequence[str] | None = None) -> TaskStacks:
    """Stack `tasks`' values of every slot (default: all of tt's tasks). Heads with fewer classes are
    zero-padded to the largest; `mixed_forward` masks their missing logits to -inf."""
    tasks = list(tt.tasks if tasks is None else tasks)
    values, rows = {}, {}
    sets = [tt.tensors(t) for t in tasks]
    for name in tt.slots:
        vs = [s[name].detach() for s in sets]
        shapes = {tuple(v.shape) for v in vs}
        if len(shapes) > 1:
            if len({sh[1:] for sh in shapes}) > 1:
                raise TaskshareError(f"mixed_forward: slot {name} differs across tasks beyond its first "
                                     "dimension; run those tasks separately (tt.use(task))")
            rows[name] = torch.tensor([v.shape[0] for v in vs])
            top = max(sh[0] for sh in shapes)
            vs = [F.pad(v, [0, 0] * (v.dim() - 1) + [0, top - v.shape[0]]) for v in vs]
        values[name] = torch.stack(vs)
    return TaskStacks(tasks, values, rows)


def _broadcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(N or 1, C, ...) -> (N or 1, C, ..., 1, 1) for an activation of `ndim` dims."""
    return v.reshape(*v.shape, *([1] * (ndim - v.dim())))


def _mixed_bn(m: _BatchNorm, get, tid):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if m.training or m.running_mean is None:
            raise TaskshareError("mixed_forward runs BatchNorm with per-task statistics: call model.eval() "
                                 "first (training uses single-task batches)")
        n = x.shape[0]

        def per_channel(leaf):  # (N*C,): sample n's task's values for its C channels
            v, stacked = get(leaf)
            return None if v is None else v[tid].reshape(-1) if stacked else v.repeat(n)

        # the batch folded into channels: torch's own eval kernel, so each sample is computed exactly as
        # in its task's single-task forward
        y = F.batch_norm(x.reshape(1, n * x.shape[1], *x.shape[2:]), per_channel("running_mean"),
                         per_channel("running_var"), per_channel("weight"), per_channel("bias"), False, 0.0, m.eps)
        return y.reshape(x.shape)
    return forward


def _mixed_norm(m: nn.Module, get, tid):
    def forward(x: torch.Tensor) -> torch.Tensor:
        (w, sw), (b, sb) = get("weight"), get("bias")
        layer = isinstance(m, nn.LayerNorm)
        if layer:
            y = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        else:
            y = F.group_norm(x, m.num_groups, None, None, m.eps)

        def shape(v, stacked):  # per-sample (N, ...) or shared values, broadcastable against y
            if layer:
                k = len(m.normalized_shape)
                return v.reshape(v.shape[0] if stacked else 1, *([1] * (x.dim() - 1 - k)), *v.shape[-k:])
            return _broadcast(v if stacked else v.unsqueeze(0), x.dim())

        if w is not None:
            y = y * shape(w[tid] if sw else w, sw)
        if b is not None:
            y = y + shape(b[tid] if sb else b, sb)
        return y
    return forward


def _mixed_conv(m: _ConvNd, get, tid):
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(m.kernel_size)]
    if m.padding_mode != "zeros":
        raise TaskshareError(f"mixed_forward supports zero-padded convolutions only, not padding_mode="
                             f"{m.padding_mode!r}; run those tasks separately (tt.use(task))")

    def forward(x: torch.Tensor) -> torch.Tensor:
        (w, sw), (b, sb) = get("weight"), get("bias")
        n = x.shape[0]
        if sw:  # the batch folded into channels: one grouped conv with N stacked per-sample kernels
            k = w[tid]
            y = conv(x.reshape(1, n * x.shape[1], *x.shape[2:]), k.reshape(n * k.shape[1], *k.shape[2:]),
                     None, m.stride, m.padding, m.dilation, n * m.groups)
            y = y.reshape(n, -1, *y.shape[2:])
        else:
            y = conv(x, w, None, m.stride, m.padding, m.dilation, m.groups)
        if b is not None:
            y = y + _broadcast(b[tid] if sb else b.unsqueeze(0), y.dim())
        return y
    return forward


def _mixed_linear(m: nn.Linear, get, tid, rows: dict[str, torch.Tensor]):
    def forward(x: torch.Tensor) -> torch.Tensor:
        (w, sw), (b, sb) = get("weight"), get("bias")
        n = x.shape[0]
        if sw:  # all T layers at once, then each sample's own
            t, o = w.shape[0], w.shape[1]
            y = F.linear(x, w.reshape(t * o, -1)).reshape(n, -1, t, o)
            if b is not None:
                y = y + (b if sb else b.unsqueeze(0))
            y = y.gather(2, tid.view(n, 1, 1, 1).expand(n, y.shape[1], 1, o)).squeeze(2)
            y = y.reshape(*x.shape[:-1], o)
        else:
            y = F.linear(x, w)
            if b is not None:
                y = y + (b[tid].reshape(n, *([1] * (x.dim() - 2)), -1) if sb else b)
        valid = rows.get("weight", rows.get("bias"))
        if valid is not None:  # heads with fewer classes: their padded logits are -inf
            pad = torch.arange(y.shape[-1], device=y.device) >= valid.to(y.device)[tid].unsqueeze(-1)
            y = y.masked_fill(pad.reshape(n, *([1] * (y.dim() - 2)), -1), float("-inf"))
        return y
    return forward


def mixed_forward(model: nn.Module, tt: TaskTensors, x: torch.Tensor, task_ids: torch.Tensor,
                  tasks: Sequence[str] | None = None, stacks: TaskStacks | None = None) -> torch.Tensor:
    """One forward of `model` where sample n uses the patch of ``tasks[task_ids[n]]`` (default tasks: tt.tasks).

    `model` is tt's model, or a module wrapping it; call it in eval mode. `stacks` (`stack_tasks(tt, tasks)`)
    can be computed once and reused while the patches do not change. The output equals running each task
    separately (see module docstring); logits of classes a task's head does not have are -inf.
    """
    if stacks is None:
        stacks = stack_tasks(tt, tasks)
    elif tasks is not None and list(tasks) != stacks.tasks:
        raise TaskshareError("mixed_forward: `stacks` were built for other tasks; rebuild them with stack_tasks")
    names = stacks.tasks
    task_ids = torch.as_tensor(task_ids, device=x.device).long()
    if task_ids.shape != (x.shape[0],):
        raise TaskshareError(f"mixed_forward: task_ids must have one entry per sample ({x.shape[0]}), "
                             f"got shape {tuple(task_ids.shape)}")
    if len(task_ids) and (int(task_ids.min()) < 0 or int(task_ids.max()) >= len(names)):
        raise TaskshareError(f"mixed_forward: task ids must index the {len(names)} tasks {names}")
    by_module: dict[str, dict[str, str]] = {}
    for name in tt.slots:
        prefix, _, leaf = name.rpartition(".")
        by_module.setdefault(prefix, {})[leaf] = name
    values = {k: v.to(x.device) for k, v in stacks.values.items()}
    patched: list[nn.Module] = []
    try:
        for prefix, leaves in by_module.items():
            m = tt.model.get_submodule(prefix)

            def get(leaf, m=m, leaves=leaves):
                return (values[leaves[leaf]], True) if leaf in leaves else (getattr(m, leaf, None), False)

            if isinstance(m, _BatchNorm):
                fwd = _mixed_bn(m, get, task_ids)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                fwd = _mixed_norm(m, get, task_ids)
            elif isinstance(m, _ConvNd):
                fwd = _mixed_conv(m, get, task_ids)
            elif isinstance(m, nn.Linear):
                ragged = {leaf: stacks.rows[n] for leaf, n in leaves.items() if n in stacks.rows}
                fwd = _mixed_linear(m, get, task_ids, ragged)
            else:
                raise TaskshareError(f"mixed_forward: per-task tensors of {type(m).__name__} ({prefix}) are not "
                                     "supported; run those tasks separately (tt.use(task))")
            m.forward = fwd
            patched.append(m)
        return model(x)
    finally:
        for m in patched:
            del m.forward
