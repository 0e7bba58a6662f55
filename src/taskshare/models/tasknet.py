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


PRETRAINED = ("mobilenetv2", "mobilenetv2-random", "minilm")  # transfer backbones (weights from packages)
ALL_BACKBONES = (*BACKBONES, *PRETRAINED)


def token_input(input_shape: tuple[int, ...]) -> bool:
    """Pre-tokenized text: samples of shape (2, L) = [input_ids, attention_mask] (`models.minilm.tokenize`)."""
    return len(input_shape) == 2 and input_shape[0] == 2


def build_backbone(name: str, input_shape: tuple[int, ...], seed: int, *, width: float = 1.0, image_size: int = 32,
                   weights: str | None = None, sha256: str | None = None,
                   hidden: tuple[int, ...] | None = None) -> nn.Module:
    """The one backbone builder, by name (`ALL_BACKBONES`), weights drawn from `seed` (independent of the global
    RNG's state): mlp (`hidden` widths, default 400-400), cnn, resnet18, lenet; mobilenetv2 (ImageNet; `width` 1.0), mobilenetv2-random (`width`),
    both at `image_size`; minilm (all-MiniLM-L6-v2). `weights` (+ `sha256`): your own file or directory."""
    model = _build(name, input_shape, seed, width, image_size, weights, sha256, hidden)
    if weights is None:  # rebuildable from this call alone (seeded, or weights from an installed package)
        model.taskshare_builder = {"name": "build_backbone", "backbone": name, "input_shape": list(input_shape),
                                   "seed": int(seed), "width": float(width), "image_size": image_size,
                                   "hidden": list(hidden) if hidden else None}
    return model


def _build(name, input_shape, seed, width, image_size, weights, sha256, hidden) -> nn.Module:
    if name in ("mobilenetv2", "mobilenetv2-random"):
        from taskshare.models.mobilenetv2 import MobileNetV2Backbone
        pretrained = name == "mobilenetv2"
        if pretrained and width != 1.0:
            raise ConfigError("the ImageNet MobileNetV2 has width 1.0: use backbone=mobilenetv2-random for "
                              f"width {width}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            bb = MobileNetV2Backbone(input_shape, width, image_size)
        return bb.load_imagenet(weights, sha256) if pretrained else bb
    if name == "minilm":
        from taskshare.models.minilm import minilm
        return minilm(weights, sha256)
    if name not in BACKBONES:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(ALL_BACKBONES)} (--set model=NAME)")
    cls, _ = BACKBONES[name]
    if name != "mlp" and len(input_shape) != 3:
        raise ConfigError(f"model {name!r} needs image inputs (C, H, W), got shape {tuple(input_shape)}: "
                          "use --set model=mlp")
    if name == "lenet" and min(input_shape[1:]) < 16:
        raise ConfigError(f"model=lenet needs images of at least 16x16, got shape {tuple(input_shape)}: "
                          "use --set model=mlp")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp" and hidden:
            return cls(tuple(input_shape), tuple(hidden))
        return cls(tuple(input_shape))
