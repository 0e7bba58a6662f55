"""The per-task-tensor core: one base network, and for each task a named set of task-specific tensors.

Every method in taskshare is "a base network + per-task tensors":

=====================  ===================================================================
method                 task-specific slots
=====================  ===================================================================
finetune / EWC / LwF   the head (``head.weight``, ``head.bias``)
expert-per-task        every parameter and buffer of the network (a whole expert)
model patches          BN/LN scale and bias + BN running statistics, depthwise kernels, head
TAPS                   each gated layer's ``delta`` and ``score``, all norm layers, the head
PAR                    heads (reuse) or whole experts (allocation)
AdaTask                the heads of a multi-output network (all tasks active at once)
=====================  ===================================================================

A *slot* is the qualified name of a parameter or buffer of the base network (``layer1.0.bn1.weight``).
For each task, `TaskTensors` keeps its own tensor object per slot. `activate(task)` rebinds the module
attributes to that task's objects: a pointer swap, so the forward pass is the plain module's forward with
no overhead, and an optimizer built over ``parameters(task)`` can only ever touch that task's tensors.
Tensors of other tasks are different objects: they cannot change while another task trains. Shared
tensors (everything that is not a slot) are identified by a fingerprint, so an artifact saved for one base
is refused by another.

``activate(None)`` puts the base tensors back: the disabled model is exactly the base model.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from taskshare.errors import TaskshareError


@dataclass(frozen=True)
class _Slot:
    module: nn.Module
    leaf: str
    is_param: bool


class TaskTensors:
    """Per-task tensors plugged into named slots of one base network (see module docstring)."""

    def __init__(self, model: nn.Module, slots: Iterable[str] = ()):
        self.model = model
        self._slots: dict[str, _Slot] = {}
        self._base: dict[str, torch.Tensor] = {}
        self._tasks: dict[str, dict[str, torch.Tensor]] = {}
        self.active: str | None = None
        for name in slots:
            self.add_slot(name)

    # ----------------------------------------------------------------------------------- slots
    def add_slot(self, name: str) -> None:
        """Declare the parameter or buffer `name` task-specific. Must happen before any task exists."""
        if self._tasks:
            raise TaskshareError(f"cannot add slot {name!r} after tasks were added: declare every slot first")
        if name in self._slots:
            return
        *path, leaf = name.split(".")
        module = self.model
        for part in path:
            if not hasattr(module, part):
                raise TaskshareError(f"slot {name!r}: the model has no submodule {part!r}; "
                                     "use a name from model.named_parameters() or named_buffers()")
            module = getattr(module, part)
        if leaf in module._parameters and module._parameters[leaf] is not None:
            is_param = True
            tensor = module._parameters[leaf]
        elif leaf in module._buffers and module._buffers[leaf] is not None:
            is_param = False
            tensor = module._buffers[leaf]
        else:
            raise TaskshareError(f"slot {name!r}: {type(module).__name__} has no parameter or buffer {leaf!r}")
        self._slots[name] = _Slot(module, leaf, is_param)
        self._base[name] = tensor

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(self._slots)

    def is_param(self, name: str) -> bool:
        return self._slots[name].is_param

    # ----------------------------------------------------------------------------------- tasks
    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def __contains__(self, task: str) -> bool:
        return task in self._tasks

    def add_task(self, task: str, init: Mapping[str, torch.Tensor] | None = None, *,
                 copy_from: str | None = None, trainable: bool | Iterable[str] = True) -> dict[str, torch.Tensor]:
        """Create `task`'s set. Each slot starts as a copy of `copy_from`'s tensor (default: the base
        tensor), overridden by `init` (tensors may change shape, e.g. a head with this task's classes).

        `trainable`: which parameter slots get requires_grad (True: all, False: none, or a set of names).
        """
        if task in self._tasks:
            raise TaskshareError(f"task {task!r} already exists: remove_task() it first or pick another name")
        init = dict(init or {})
        unknown = set(init) - set(self._slots)
        if unknown:
            raise TaskshareError(f"add_task({task!r}): {sorted(unknown)[0]!r} is not a slot; slots are "
                                 f"{list(self._slots)[:6]}{'...' if len(self._slots) > 6 else ''}")
        source = self._base if copy_from is None else self.tensors(copy_from)
        train_set = set(self._slots) if trainable is True else set() if trainable is False else set(trainable)
        tensors: dict[str, torch.Tensor] = {}
        for name, slot in self._slots.items():
            value = init[name] if name in init else source[name]
            data = value.detach().clone()
            if slot.is_param:
                tensors[name] = nn.Parameter(data, requires_grad=name in train_set and data.is_floating_point())
            else:
                tensors[name] = data
        self._tasks[task] = tensors
        return tensors

    def remove_task(self, task: str) -> None:
        self._check(task)
        if self.active == task:
            self.activate(None)
        del self._tasks[task]

    def tensors(self, task: str) -> dict[str, torch.Tensor]:
        """The live tensor objects of `task` (slot name -> tensor)."""
        self._check(task)
        return self._tasks[task]

    def base_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self._base)

    def all_tensors(self) -> list[torch.Tensor]:
        """Shared, base and every task's tensors, in a fixed order (what data-parallel ranks compare)."""
        out = list(self.shared_named_tensors().values()) + list(self._base.values())
        for task in self.tasks:
            out += list(self.tensors(task).values())
        return out

    def parameters(self, task: str, trainable_only: bool = True) -> list[nn.Parameter]:
        return [t for n, t in self.tensors(task).items()
                if self._slots[n].is_param and (t.requires_grad or not trainable_only)]

    def _check(self, task: str) -> None:
        if task not in self._tasks:
            known = ", ".join(self._tasks) or "none yet"
            raise TaskshareError(f"unknown task {task!r}: known tasks are {known}; train or load it first")

    # ------------------------------------------------------------------------------ activation
    def activate(self, task: str | None) -> None:
        """Bind `task`'s tensors into the model (None: the base tensors)."""
        values = self._base if task is None else self.tensors(task)
        for name, slot in self._slots.items():
            store = slot.module._parameters if slot.is_param else slot.module._buffers
            store[slot.leaf] = values[name]
        self.active = task

    @contextmanager
    def use(self, task: str | None) -> Iterator[nn.Module]:
        """Temporarily activate `task`; the previously active task is restored afterwards."""
        previous = self.active
        self.activate(task)
        try:
            yield self.model
        finally:
            self.activate(previous)

    # ------------------------------------------------------------------------------ shared part
    def shared_named_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers that are not slots (identical for every task)."""
        out = {}
        for name, t in self.model.named_parameters(remove_duplicate=True):
            if name not in self._slots:
                out[name] = t
        for name, t in self.model.named_buffers(remove_duplicate=True):
            if name not in self._slots:
                out[name] = t
        return out

    def shared_parameters(self, trainable_only: bool = False) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if n not in self._slots
                and (p.requires_grad or not trainable_only)]

    def fingerprint(self) -> str:
        """sha256 over the slot names and the shared tensors' names, dtypes, shapes and values."""
        h = hashlib.sha256()
        h.update(("slots:" + ",".join(sorted(self._slots))).encode())
        for name, t in sorted(self.shared_named_tensors().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    # ------------------------------------------------------------------------------ accounting
    def count(self, task: str) -> dict[str, int]:
        """Numbers of elements `task` adds: trainable parameters and (non-trainable) state such as BN stats."""
        params = sum(t.numel() for n, t in self.tensors(task).items() if self._slots[n].is_param)
        buffers = sum(t.numel() for n, t in self.tensors(task).items() if not self._slots[n].is_param)
        return {"params": params, "buffers": buffers}

    def count_shared(self) -> int:
        return sum(p.numel() for p in self.shared_parameters())

    # ------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """Everything needed to rebuild the tensors: shared values, every task's set, what is trainable."""
        return {"shared": {n: t.detach() for n, t in self.shared_named_tensors().items()},
                "tasks": {task: {n: t.detach() for n, t in ts.items()} for task, ts in self._tasks.items()},
                "trainable": {task: [n for n, t in ts.items() if t.requires_grad] for task, ts in self._tasks.items()},
                "active": self.active}

    def load_state(self, state: dict) -> None:
        """Restore `state()` in place: shared tensors are copied into the model, task sets re-created."""
        with torch.no_grad():
            shared = self.shared_named_tensors()
            if set(shared) != set(state["shared"]):
                raise TaskshareError("checkpoint does not fit this model: its shared tensors differ; "
                                     "resume with the same method and options")
            for n, t in shared.items():
                t.copy_(state["shared"][n])
        self.activate(None)
        for task in [t for t in self._tasks if t not in state["tasks"]]:
            del self._tasks[task]
        for task, ts in state["tasks"].items():
            mine = self._tasks.get(task)
            if mine is not None and all(mine[n].shape == v.shape for n, v in ts.items()):
                with torch.no_grad():  # in place: optimizers keep pointing at the same tensors
                    for n, v in ts.items():
                        mine[n].copy_(v)
            else:
                self._tasks.pop(task, None)
                self.add_task(task, ts, trainable=state["trainable"][task])
        self._tasks = {t: self._tasks[t] for t in state["tasks"]}  # the saved order (optimizer order)
        self.activate(state["active"])
