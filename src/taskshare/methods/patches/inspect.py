"""`taskshare inspect`: what each task adds to a backbone, per patch kind (no weights loaded)."""
from __future__ import annotations

from torch import nn

from taskshare.errors import ConfigError
from taskshare.methods.blocks.patching import count_patch, parse_kinds
from taskshare.models import TaskNet, build_backbone

__all__ = ["INSPECT_BACKBONES", "inspect_backbone"]

INSPECT_BACKBONES = ("mobilenetv2", "minilm", "mlp", "cnn", "resnet18")


def inspect_backbone(name: str, kinds: str = "scale-bias+head", num_classes: int | None = None,
                     input_shape: tuple[int, ...] | None = None) -> str:
    """A PEFT-like summary: total parameters and what each task adds per patch kind (no weights loaded).

    mobilenetv2: torchvision's MobileNetV2 1.0 with its 1000-class ImageNet head (or `num_classes`);
    minilm: all-MiniLM-L6-v2 (mean pooling, no pooler) + a `num_classes` head (default 2); mlp, cnn,
    resnet18: taskshare's backbones on `input_shape` (default 1x28x28 for mlp, 3x32x32 otherwise) + a
    10-class head.
    """
    if name == "mobilenetv2":
        from taskshare.models.mobilenetv2 import MobileNetV2
        model, desc = MobileNetV2(num_classes or 1000), f"MobileNetV2 1.0, {num_classes or 1000}-class head"
    elif name == "minilm":
        from taskshare.models.minilm import minilm
        model = _with_head(minilm(pretrained=False), num_classes or 2)
        desc = f"all-MiniLM-L6-v2 (mean pooling), {num_classes or 2}-class head"
    elif name in ("mlp", "cnn", "resnet18"):
        shape = tuple(input_shape or ((1, 28, 28) if name == "mlp" else (3, 32, 32)))
        model = _with_head(build_backbone(name, shape, 0), num_classes or 10)
        desc = f"input {'x'.join(map(str, shape))}, {num_classes or 10}-class head"
    else:
        raise ConfigError(f"unknown backbone {name!r}: choose one of {', '.join(INSPECT_BACKBONES)}")
    counts = count_patch(model, kinds)
    total = sum(p.numel() for p in model.parameters())
    lines = [f"{name} ({desc}): {total:,} parameters", f"each task adds, patch {'+'.join(parse_kinds(kinds))}:"]
    for kind, c in counts.items():
        extra = f" + {c['buffers']:,} BN statistics (buffers)" if c["buffers"] else ""
        lines.append(f"  {kind:<11}{c['params']:>12,} params ({100 * c['params'] / total:6.2f}%) "
                     f"in {c['layers']} layer{'s' if c['layers'] != 1 else ''}{extra}")
    t = counts["total"]["params"]
    lines.append(f"trainable params per task: {t:,} || all params: {total:,} || trainable%: {100 * t / total:.4f}")
    return "\n".join(lines)


def _with_head(backbone: nn.Module, num_classes: int) -> TaskNet:
    net = TaskNet(backbone)
    net.head = nn.Linear(backbone.out_dim, num_classes)
    return net
