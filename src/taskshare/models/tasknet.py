"""`TaskNet`: a backbone plus one linear head per task, the network the lifelong learners train.

The head is a slot of the per-task-tensor core (`head.weight`, `head.bias`); each task's head has its own
number of classes. `features` and `head_logits` let a learner apply any task's head to one shared feature
batch (LwF, joint training) without rebinding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.errors import ConfigError
from taskshare.models.backbones import BACKBONES

HEAD_SLOTS = ("head.weight", "head.bias")


class TaskNet(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, 1)  # placeholder: every task binds its own head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def head_logits(features: torch.Tensor, head: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply a task's head tensors (from TaskTensors.tensors(task)) to a feature batch."""
    return F.linear(features, head["head.weight"], head["head.bias"])


def new_head(in_dim: int, num_classes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A freshly initialised head, as nn.Linear initialises (Kaiming-uniform), drawn from `generator`."""
    bound = 1.0 / math.sqrt(in_dim)
    w = (torch.rand(num_classes, in_dim, generator=generator) * 2 - 1) * bound
    b = (torch.rand(num_classes, generator=generator) * 2 - 1) * bound
    return {"head.weight": w, "head.bias": b}


def build_backbone(name: str, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """Build a backbone with weights drawn from `seed` (independent of the global RNG's state)."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(BACKBONES)} (--set model=NAME)")
    cls, _ = BACKBONES[name]
    if name != "mlp" and len(input_shape) != 3:
        raise ConfigError(f"model {name!r} needs image inputs (C, H, W), got shape {input_shape}: use --set model=mlp")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(tuple(input_shape))
