"""Options of the model-patches learners (`patches`, `patches-multitask` and the named kinds)."""
from __future__ import annotations

import dataclasses

from taskshare.errors import ConfigError
from taskshare.models import ALL_BACKBONES
from taskshare.methods.blocks.patching import parse_kinds

__all__ = ["MODES", "PATCH_BACKBONES", "PatchOptions", "PatchesOptions"]

PATCH_BACKBONES = ("auto", *ALL_BACKBONES)

MODES = ("transfer", "multi-task")


@dataclasses.dataclass
class PatchOptions:
    backbone: str = "auto"          # auto | mobilenetv2 (ImageNet) | mobilenetv2-random | minilm | mlp | cnn | resnet18
    mode: str = "transfer"          # transfer (frozen base, --method patches) | multi-task (--method patches-multitask)
    image_size: int = 32            # MobileNetV2 input side (images are resized to it)
    width: float = 1.0              # width multiplier of mobilenetv2-random
    weights: str | None = None      # your own weights file (MobileNetV2 .pth) or directory (MiniLM)
    sha256: str | None = None       # its expected sha256 (checked when given)
    bn_samples: int = 2048          # transfer: re-estimate each task's BN statistics on this many samples (0: off)

    def __post_init__(self):
        if self.backbone not in PATCH_BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}: choose one of {', '.join(PATCH_BACKBONES)}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}: choose transfer or multi-task")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be at least 8, got {self.image_size}")
        if not self.width > 0:
            raise ConfigError(f"width must be positive, got {self.width}")
        if self.bn_samples < 0:
            raise ConfigError(f"bn_samples must be >= 0, got {self.bn_samples}")


@dataclasses.dataclass
class PatchesOptions(PatchOptions):
    kinds: str = "scale-bias+head"  # patch kinds joined by '+': head, scale-bias, bias, depthwise, full

    def __post_init__(self):
        super().__post_init__()
        parse_kinds(self.kinds)
