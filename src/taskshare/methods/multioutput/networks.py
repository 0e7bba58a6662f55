"""The multi-output benchmarks' networks: a shared encoder from `models.build_backbone` (the MLP or Sener &
Koltun's LeNet) and one linear head per task, each initialised from the run seed alone, and K single-task
networks for the STL baselines."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from taskshare.data.multioutput import MultiTaskData
from taskshare.errors import ConfigError
from taskshare.methods.base import task_seed
from taskshare.methods.multioutput.model import MultiOutputNet
from taskshare.models import BACKBONES, build_backbone

__all__ = ["SingleTaskNets", "build_model"]


def build_model(data: MultiTaskData, seed: int, model: str = "auto",
                tasks: tuple[str, ...] | None = None) -> MultiOutputNet:
    """Shared encoder + one linear head per task, initialised from ``seed`` only (the encoder from one seed,
    head k from (seed, k)), so an STL network for task k starts exactly as the multi-task one."""
    kind = data.encoder if model == "auto" else model
    if kind not in BACKBONES:
        raise ConfigError(f"model={model!r} is not available for multi-output benchmarks; use auto or one of "
                          f"{', '.join(BACKBONES)}")
    specs = [t for t in data.tasks if tasks is None or t.name in tasks]
    with torch.random.fork_rng(devices=[]):
        enc = build_backbone(kind, data.input_shape, task_seed(seed, 0, salt=1), hidden=tuple(data.hidden) or (256, 128))
        heads = {}
        for k, spec in enumerate(data.tasks):
            torch.manual_seed(task_seed(seed, k, salt=2))
            head = nn.Linear(enc.out_dim, spec.out_dim)
            if spec in specs:
                heads[spec.name] = head
    return MultiOutputNet(enc, heads)


class SingleTaskNets(nn.Module):
    """One ``MultiOutputNet`` per task; ``forward(x)`` gives {task: output} like a multi-output model."""

    def __init__(self, nets: Mapping[str, MultiOutputNet]):
        super().__init__()
        self.nets = nn.ModuleDict(dict(nets))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {t: net(x)[t] for t, net in self.nets.items()}
