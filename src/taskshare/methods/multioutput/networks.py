"""The multi-output benchmarks' networks: a shared encoder (an MLP or Sener & Koltun's LeNet) and one linear
head per task, each initialised from the run seed alone, and K single-task networks for the STL baselines."""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from taskshare.data.multioutput import MultiTaskData
from taskshare.errors import ConfigError
from taskshare.methods.base import task_seed
from taskshare.methods.multioutput.model import MultiOutputNet

__all__ = ["LeNet", "SingleTaskNets", "build_model", "mlp"]

class LeNet(nn.Sequential):
    """Sener & Koltun's MultiMNIST encoder: conv5(10)-pool-conv5(20)-pool-FC(50), ReLU (no BatchNorm)."""

    def __init__(self, input_shape: tuple[int, ...]):
        c, h, w = input_shape
        flat = 20 * (((h - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(c, 10, 5)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(10, 20, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()), ("fc", nn.Linear(flat, 50)), ("relu3", nn.ReLU())]))
        self.out_dim = 50


def mlp(in_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """Flatten + Linear/ReLU layers named fc1, fc2, ... (the AU plot's layer names)."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i, h in enumerate(hidden, 1):
        layers += [(f"fc{i}", nn.Linear(in_dim, h)), (f"relu{i}", nn.ReLU())]
        in_dim = h
    seq = nn.Sequential(OrderedDict(layers))
    seq.out_dim = in_dim
    return seq


def _encoder(data: MultiTaskData, kind: str) -> nn.Module:
    shape = data.input_shape
    if kind == "lenet":
        if len(shape) != 3 or min(shape[1:]) < 16:
            raise ConfigError(f"model=lenet needs image inputs (C, H, W) of at least 16x16; {data.name} has "
                              f"{shape}: use model=mlp")
        return LeNet(shape)
    return mlp(math.prod(shape), tuple(data.hidden) or (256, 128))


def build_model(data: MultiTaskData, seed: int, model: str = "auto",
                tasks: tuple[str, ...] | None = None) -> MultiOutputNet:
    """Shared encoder + one linear head per task, initialised from ``seed`` only (the encoder from one seed,
    head k from (seed, k)), so an STL network for task k starts exactly as the multi-task one."""
    kind = data.encoder if model == "auto" else model
    if kind == "cnn":
        raise ConfigError("model=cnn is the lifelong benchmarks' SmallCNN; the multi-output benchmarks use "
                          "model=lenet (Sener & Koltun's MultiMNIST encoder), mlp or auto")
    if kind not in ("mlp", "lenet"):
        raise ConfigError(f"model={model!r} is not available for multi-output benchmarks; use auto, mlp or lenet")
    specs = [t for t in data.tasks if tasks is None or t.name in tasks]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task_seed(seed, 0, salt=1))
        enc = _encoder(data, kind)
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
