"""`PARTensors`: PAR's tensors as the runner sees a learner's ``tt`` (count, artifacts, fingerprint).

PAR has no single base network: each expert is its own `TaskTensors` (the expert's cell network is that
TaskTensors' shared part; each task on the expert owns a head slot, plus BN statistics slots with
``bn="task"``). This view answers the calls the runner makes on ``learner.tt``:

- ``count(task)``: what the task ADDED. The task that allocated an expert adds the whole expert (its
  shared parameters and buffers) plus its head; a reusing task adds its head (feature_dim·C_t + C_t
  parameters) and, with ``bn="task"``, its BN statistics (buffers).
- ``tensors(task)``: the same split as an artifact: expert tensors (module names, e.g. ``cells.0...``) only
  in the allocating task's artifact, the head (``head.weight``, ``head.bias``) in every task's.
- ``count_shared()`` = 0 and ``shared_named_tensors()`` = {}: nothing is shared by all tasks (as with
  expert-per-task); ``fingerprint()`` is that of the empty base.
"""
from __future__ import annotations

import hashlib

import torch

_BUFFER_LEAVES = ("running_mean", "running_var", "num_batches_tracked")


class PARTensors:
    def __init__(self, learner):
        self._learner = learner

    def _expert(self, task: str):
        return self._learner.expert_of(task)

    @property
    def tasks(self) -> list[str]:
        return list(self._learner.task_expert)

    def __contains__(self, task: str) -> bool:
        return task in self._learner.task_expert

    def is_param(self, name: str) -> bool:
        return name.rsplit(".", 1)[-1] not in _BUFFER_LEAVES

    def tensors(self, task: str) -> dict[str, torch.Tensor]:
        expert = self._expert(task)
        out = dict(expert.tt.shared_named_tensors()) if expert.owner == task else {}
        out.update(expert.tt.tensors(task))
        return out

    def parameters(self, task: str, trainable_only: bool = True) -> list[torch.nn.Parameter]:
        return [t for n, t in self.tensors(task).items()
                if self.is_param(n) and isinstance(t, torch.nn.Parameter) and (t.requires_grad or not trainable_only)]

    def count(self, task: str) -> dict[str, int]:
        params = buffers = 0
        for name, t in self.tensors(task).items():
            if self.is_param(name):
                params += t.numel()
            else:
                buffers += t.numel()
        return {"params": params, "buffers": buffers}

    def count_shared(self) -> int:
        return 0

    def shared_named_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def shared_parameters(self, trainable_only: bool = False) -> list[torch.nn.Parameter]:
        return []

    def fingerprint(self) -> str:
        return hashlib.sha256(b"slots:").hexdigest()  # as TaskTensors over an empty shared part
