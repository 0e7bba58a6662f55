"""Single-task learning (STL) baselines: K independent single-task trainers (method ew with one task each),
stepped on the same batches as a multi-task method; the reference of Δm."""
from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from taskshare.data.multioutput import TaskSpec
from taskshare.methods.multioutput.networks import SingleTaskNets
from taskshare.methods.multioutput.trainer import MultiTaskTrainer

__all__ = ["STLStepper", "loss_fn"]


def loss_fn(spec: TaskSpec) -> Callable[[Tensor, Tensor], Tensor]:
    if spec.kind == "ce":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out[:, 0], y)


class STLStepper:
    """K independent single-task trainers (method ew with one task) stepped on the same batches."""

    def __init__(self, nets: SingleTaskNets, specs: tuple[TaskSpec, ...], **kw):
        self.trainers = {s.name: MultiTaskTrainer(nets.nets[s.name], {s.name: loss_fn(s)}, "ew", **kw)
                         for s in specs}
        self.last_weights = None

    def prepare(self, x, ys):
        for t, tr in self.trainers.items():
            tr.prepare(x, {t: ys[t]})

    def step(self, x, ys) -> dict[str, float]:
        out = {}
        for t, tr in self.trainers.items():
            out.update(tr.step(x, {t: ys[t]}))
        return out

    def end_epoch(self):
        pass

    def state_dict(self):
        return {t: tr.state_dict() for t, tr in self.trainers.items()}

    def load_state_dict(self, state):
        for t, tr in self.trainers.items():
            tr.load_state_dict(state[t])
