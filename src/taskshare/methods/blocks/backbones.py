"""The backbones the transfer methods share (model patches, TAPS): the ImageNet MobileNetV2, a random one,
MiniLM for pre-tokenized text, or taskshare's plain networks."""
from __future__ import annotations

import torch
from torch import nn

from taskshare.errors import ConfigError
from taskshare.models import build_backbone

__all__ = ["PATCH_BACKBONES", "build_patch_backbone", "token_input"]

PATCH_BACKBONES = ("auto", "mobilenetv2", "mobilenetv2-random", "minilm", "mlp", "cnn", "resnet18")


def token_input(input_shape: tuple[int, ...]) -> bool:
    """Pre-tokenized text: samples of shape (2, L) = [input_ids, attention_mask] (`models.minilm.tokenize`)."""
    return len(input_shape) == 2 and input_shape[0] == 2


def build_patch_backbone(backbone: str, model: str, input_shape: tuple[int, ...], seed: int, *, width: float = 1.0,
                         image_size: int = 32, weights: str | None = None, sha256: str | None = None) -> nn.Module:
    """The backbone named `backbone` (``auto``: `model` if set, else the ImageNet MobileNetV2 for images and
    MiniLM for pre-tokenized text); `width`/`image_size` for MobileNetV2, your own `weights` (+ `sha256`)."""
    name = backbone
    if name == "auto":
        name = model if model != "auto" else "mobilenetv2" if len(input_shape) == 3 else \
            "minilm" if token_input(input_shape) else "mlp"
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
    return build_backbone(name, input_shape, seed)
