"""`TaskModel`: your own network made task-aware, PEFT-style.

    tm = taskshare.wrap(model, method="patches", kinds="scale-bias+head")
    tm.add_task("cars", num_classes=196)
    tm.set_task("cars")                               # or: with tm.using("cars"): ...
    opt = torch.optim.SGD(tm.trainable_parameters(), lr=0.01)
    loss = F.cross_entropy(tm(x), y) + tm.penalty()   # your loop, your optimizer
    tm(x, task=["cars", "birds", ...])                # a mixed batch: one task name per sample
    tm.save("folder"); tm2 = taskshare.load("folder")

Methods (the per-task tensors; everything else is the frozen shared base, see `core.TaskTensors`):

- ``patches`` (Mudrakarta et al., ICLR 2019): the patch `kinds` joined by '+' (``scale-bias``, ``bias``,
  ``depthwise``, ``head``, ``full``). Every BatchNorm's running statistics are per task whatever the kinds
  (the paper's patches re-estimate them per task; shared statistics would mix tasks), except for a head alone
  (linear probing on the frozen base, its statistics included).
- ``taps`` (Wallingford et al., CVPR 2022): every Conv/Linear outside the head gets a gated delta and a score,
  norms and head are per task; ``penalty()`` is λ·R(s) of the active task (`methods.blocks.gating`).
- ``head``: only the last layer (linear probing).
- ``slots``: the parameters and buffers you name (`slots=[...]`, qualified names); what a `taskshare run` of
  finetune/EWC/LwF (heads), expert-per-task (everything) or a patch method records for its tasks.

The head is found by name (``head``, ``classifier``, ``fc``; its last Linear); ``add_task(name, num_classes)``
gives the task a new head of that size, initialised like ``nn.Linear`` from (seed, task index).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from taskshare.core import TaskTensors
from taskshare.errors import ConfigError, TaskshareError
from taskshare.methods.blocks import gating
from taskshare.methods.blocks.patching import bn_stat_slots, find_head, folded_bn, parse_kinds, patch_slots
from taskshare.methods.blocks.mixed import mixed_forward

__all__ = ["METHODS", "TaskModel"]

METHODS = {"patches": "model patches: per-task norm scale/bias (+ statistics), depthwise kernels and/or head",
           "taps": "TAPS: per-task gated deltas on every layer, a sparsity penalty picks the layers",
           "head": "a new head per task on a frozen base (linear probing)",
           "slots": "the per-task parameters and buffers you name (slots=[qualified names])"}


def _head_init(in_dim: int, num_classes: int, seed: int, index: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    bound = 1.0 / math.sqrt(in_dim)
    return {"weight": (torch.rand(num_classes, in_dim, generator=gen) * 2 - 1) * bound,
            "bias": (torch.rand(num_classes, generator=gen) * 2 - 1) * bound}


class TaskModel(nn.Module):
    """A base network plus per-task tensors for one method (see module docstring)."""

    def __init__(self, model: nn.Module, method: str = "patches", *, kinds: str = "scale-bias+head",
                 head: str | None = "auto", layer_types: Sequence[str] = ("Conv2d", "Linear"),
                 lambda_: float = 1.0, penalty_mode: str = "official", tau: float = gating.TAU,
                 score_init: float = gating.SCORE_INIT, slots: Sequence[str] = (), seed: int = 0,
                 input_shape: Sequence[int] | None = None, preprocessing: dict[str, Any] | None = None):
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r} for wrap: choose one of {', '.join(METHODS)}")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"wrap needs a torch.nn.Module, got {type(model).__name__}")
        self.method, self.seed = method, int(seed)
        self.head_name = find_head(model) if head == "auto" else head
        self.options: dict[str, Any] = {"head": self.head_name}
        if method == "patches":
            self.options["kinds"] = "+".join(parse_kinds(kinds))
            slots = patch_slots(model, self.options["kinds"])
            if self.options["kinds"] != "head":   # a head alone is linear probing: the base's statistics
                slots += [s for s in bn_stat_slots(model) if s not in slots]
            tt = TaskTensors(model, slots)
        elif method == "taps":
            self.options.update(layer_types=list(layer_types), lambda_=float(lambda_), penalty_mode=penalty_mode,
                                tau=float(tau), score_init=float(score_init))
            tt = gating.wrap(model, layer_types=tuple(layer_types), head=self.head_name, tau=tau,
                             score_init=score_init)
        elif method == "slots":
            if not slots:
                raise ConfigError("method='slots' needs slots=[names of the per-task parameters and buffers]")
            self.options["slots"] = list(slots)
            tt = TaskTensors(model, slots)
        else:
            if self.head_name is None:
                raise ConfigError(f"{type(model).__name__} has no head (a module named head, classifier or fc): "
                                  "pass head=<module name>")
            tt = TaskTensors(model, [f"{self.head_name}.{n}" for n, _ in
                                     model.get_submodule(self.head_name).named_parameters()])
        for p in tt.shared_parameters():
            p.requires_grad_(False)
        self.model, self.tt = model, tt
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.preprocessing = dict(preprocessing or {})
        self.class_names: dict[str, list[str]] = {}
        self._disabled = False
        self.base_fingerprint = tt.fingerprint()   # of the shared tensors as wrapped (they stay frozen)
        slot_set = set(tt.slots)
        self._shared_bn = [m for p, m in model.named_modules() if isinstance(m, _BatchNorm)
                           and f"{p}.running_mean".lstrip(".") not in slot_set]

    def train(self, mode: bool = True) -> TaskModel:
        """Train mode, except BatchNorms whose statistics are shared: they stay in eval mode (frozen), so
        training one task never changes another's outputs."""
        super().train(mode)
        for m in self._shared_bn:
            m.eval()
        return self

    # ------------------------------------------------------------------------------------------ tasks
    @property
    def tasks(self) -> list[str]:
        return self.tt.tasks

    @property
    def active(self) -> str | None:
        return self.tt.active

    def add_task(self, name: str, num_classes: int | None = None, class_names: Sequence[str] | None = None) -> None:
        """A new task: the base's per-task tensors copied, and a new head of `num_classes` (default: the
        number of `class_names`; neither: a copy of the model's own head). The first task becomes active."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a task name must be a non-empty string, got {name!r}")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if num_classes is not None and num_classes != len(class_names):
                raise ConfigError(f"task {name!r}: num_classes={num_classes} but {len(class_names)} class names")
            num_classes = len(class_names)
        init = {}
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise ConfigError(f"task {name!r}: num_classes must be a positive integer, got {num_classes!r}")
            if self.head_name is None or not isinstance(self.model.get_submodule(self.head_name), nn.Linear):
                raise ConfigError(f"task {name!r}: num_classes needs a Linear head; this model has "
                                  f"{self.head_name or 'none'}: pass head=<module name> to wrap")
            head = self.model.get_submodule(self.head_name)
            fresh = _head_init(head.in_features, num_classes, self.seed, len(self.tt.tasks))
            init = {f"{self.head_name}.{k}": v.to(head.weight.device, head.weight.dtype) for k, v in fresh.items()
                    if f"{self.head_name}.{k}" in self.tt.slots}
        self.tt.add_task(name, init)
        self.class_names[name] = list(class_names) if class_names is not None else []
        if self.tt.active is None:
            self.tt.activate(name)

    def set_task(self, name: str | None) -> None:
        """Bind `name`'s tensors (None: the plain base model)."""
        self.tt.activate(name)

    @contextmanager
    def using(self, name: str) -> Iterator[TaskModel]:
        """Temporarily activate `name` (the previous task afterwards)."""
        with self.tt.use(name):
            yield self

    @contextmanager
    def disabled(self) -> Iterator[TaskModel]:
        """The plain base model (PEFT's disable_adapter): no task's tensors bound."""
        self._disabled = True
        try:
            with self.tt.use(None):
                yield self
        finally:
            self._disabled = False

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, task: str | Sequence[str] | None = None) -> torch.Tensor:
        """The active task's outputs; `task` a name: that task's; a sequence of names: sample n uses task[n]
        (classes a task's head lacks are -inf)."""
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise TaskshareError(f"inputs of shape {tuple(x.shape[1:])} given, this model takes {self.input_shape} "
                                 "(batch first): resize or reshape them")
        if task is None:
            if self.tt.active is None and not self._disabled:
                raise TaskshareError("no task is active: call set_task(name) or pass task=NAME")
            return self.model(x)
        if isinstance(task, str):
            with self.tt.use(task):
                return self.model(x)
        return self._mixed(x, list(task))

    def _mixed(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        if len(names) != x.shape[0]:
            raise TaskshareError(f"a mixed batch needs one task name per sample: {x.shape[0]} samples, "
                                 f"{len(names)} names")
        order = list(dict.fromkeys(names))
        for n in order:
            self.tt.tensors(n)  # one-line error for an unknown task
        ids = torch.tensor([order.index(n) for n in names], device=x.device)
        if self.method == "patches" and not self.training:
            return mixed_forward(self.model, self.tt, x, ids, order)
        outs = {}
        for i, n in enumerate(order):   # per task present: one forward of its samples
            with self.tt.use(n):
                outs[i] = self.model(x[ids == i])
        width = max(o.shape[1] for o in outs.values())
        first = next(iter(outs.values()))
        out = first.new_full((x.shape[0], width), float("-inf"))
        for i, o in outs.items():
            out[ids == i, :o.shape[1]] = o
        return out

    # -------------------------------------------------------------------------------------- training
    def trainable_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """The parameters a task trains (default: the active task's); the shared base is frozen."""
        name = task or self.tt.active
        if name is None:
            raise TaskshareError("no task is active: call set_task(name) or pass task=NAME")
        return self.tt.parameters(name)

    def penalty(self, task: str | None = None) -> torch.Tensor:
        """TAPS: λ·R(s) of the task's scores (add it to the loss); other methods: 0."""
        name = task or self.tt.active
        if self.method != "taps" or name is None:
            return torch.zeros(())
        return gating.task_penalty(self.tt, name, self.options["lambda_"], self.options["penalty_mode"])

    def num_parameters(self, task: str) -> int:
        """Elements `task` adds to the shared base (parameters and per-task statistics)."""
        c = self.tt.count(task)
        return c["params"] + c["buffers"]

    # ---------------------------------------------------------------------------------------- export
    def merged(self, task: str) -> nn.Module:
        """A standalone copy of the network for `task` in eval mode: TAPS deltas folded into the weights,
        patches' BN statistics folded into scale and bias; same outputs as ``self(x, task=task)`` in eval."""
        if self.method == "taps":
            return gating.merged_model(self.tt, task)
        with self.tt.use(task), torch.no_grad():
            model = copy.deepcopy(self.model)
            folded = self._folded(task)
            for name, value in folded.items():
                model.get_parameter(name).copy_(value) if name.endswith(("weight", "bias")) \
                    else model.get_buffer(name).copy_(value)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()

    def _folded(self, task: str) -> dict[str, torch.Tensor]:
        """`task`'s BN statistics folded into its scale/bias, where both are per task (else nothing to fold)."""
        if not any(s.endswith("running_mean") for s in self.tt.slots):
            return {}
        try:
            return folded_bn(self.tt, task)
        except ConfigError:   # statistics per task but scale/bias shared: kept as statistics
            return {}

    def save(self, folder, tasks: Sequence[str] | None = None, include_base: bool | None = None):
        """Write a self-describing folder (manifest.json, tasks/*.safetensors, base.safetensors when the base
        cannot be rebuilt from installed weights); see `taskshare.methods.blocks.taskfolder`."""
        from taskshare.methods.blocks.taskfolder import save_folder
        return save_folder(self, folder, tasks, include_base)
