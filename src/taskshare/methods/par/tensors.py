"""`PARTensors`: PAR's per-task accounting view over its experts (what each task added, and its artifact).

PAR has no single base network: each expert is its own `TaskTensors` (the expert's cell network is that
TaskTensors' shared part; each task on the expert owns a head slot, plus BN statistics slots with
``bn="task"``, plus the unit slots of `units.py` once the expert carries units). The engine never reads
it (it calls the learner contract: `PAR.added_parameters`, `PAR.shared_tensors` = {}, ...); PAR uses it for:

- ``count(task)``: what the task ADDED, by its role (`PAR.role`):

  - ``owner`` (the task that allocated the expert): the whole expert (its shared parameters and buffers;
    on an expert carrying units, its own BN scale/bias/statistics, which were shared before) plus its head;
  - ``reuse``: its head (feature_dim·C_t + C_t parameters) and, where BN statistics are slots (``bn="task"``
    or an expert carrying units), its statistics (buffers). Its other slots are copies of the task it
    started from (``reuse_from``), which it never trains;
  - ``unit`` (beyond the paper): ``patch``: the head + every BN scale/bias (parameters) + BN statistics
    (buffers); ``taps``: the same + one score per gated convolution + the deltas of its *active* layers
    (score >= tau; an inactive delta is never used, as `taskshare.methods.taps` counts).

- ``tensors(task)``: the same tensors (module names, e.g. ``cells.0...``, ``head.weight``): what the task's
  artifact holds (`PAR.save_artifact`).

Nothing is shared by all tasks (as with expert-per-task): `PAR.shared_tensors()` is empty and
`PAR.base_fingerprint()` is that of the empty base.
"""
from __future__ import annotations


import torch

from taskshare.methods.par.units import is_taps_slot, leaf
from taskshare.methods.blocks.gating import active_layers
from taskshare.models import HEAD_SLOTS

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
        return leaf(name) not in _BUFFER_LEAVES

    def tensors(self, task: str) -> dict[str, torch.Tensor]:
        expert = self._expert(task)
        ts = expert.tt.tensors(task)
        role = self._learner.role(task)
        if role == "owner":
            out = dict(expert.tt.shared_named_tensors())
            out.update({n: t for n, t in ts.items() if not is_taps_slot(n)})
            return out
        if role == "reuse":
            return {n: t for n, t in ts.items() if n in HEAD_SLOTS or not self.is_param(n)}
        unit = self._learner.decision(task)["unit"]
        out = {n: t for n, t in ts.items() if not is_taps_slot(n)}
        if unit == "taps":
            active = set(active_layers(expert.tt, task))
            out.update({n: t for n, t in ts.items() if leaf(n) == "score"
                        or (is_taps_slot(n) and n.rsplit(".", 1)[0] in active)})
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


class ArtifactView:
    """What `core.save_task` reads from a TaskTensors, for one task's chosen tensors and base fingerprint."""

    def __init__(self, task: str, tensors: dict[str, torch.Tensor], fingerprint: str, params: set[str]):
        self._task, self._tensors, self._fingerprint, self._params = task, tensors, fingerprint, params

    def tensors(self, task: str) -> dict[str, torch.Tensor]:
        return self._tensors

    def fingerprint(self) -> str:
        return self._fingerprint

    def is_param(self, name: str) -> bool:
        return name in self._params
