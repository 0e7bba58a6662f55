"""MobileNetV2 in plain torch, with torchvision's parameter names (so its ImageNet checkpoint loads strictly).

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018. torchvision does not
import on the CPU torch build, so this is the same network written out: a 3x3 stride-2 stem (32 channels),
17 inverted-residual blocks given by (t, c, n, s) = expansion, output channels, repeats, first stride::

    (1, 16, 1, 1) (6, 24, 2, 2) (6, 32, 3, 2) (6, 64, 4, 2) (6, 96, 3, 1) (6, 160, 3, 2) (6, 320, 1, 1)

each block being [1x1 expand conv-BN-ReLU6] -> 3x3 depthwise conv-BN-ReLU6 -> 1x1 linear projection conv-BN
(+ identity when stride 1 and channels match), a 1x1 conv-BN-ReLU6 to 1280 channels, global average
pooling and ``classifier = [Dropout(0.2), Linear(1280, classes)]``. Channel counts are multiplied by
``width_mult`` and rounded to multiples of 8 (torchvision's ``_make_divisible``); the last width is
``1280 * max(1, width_mult)``. Width 1.0 has 3,504,872 parameters and 314 state-dict tensors; the 17
depthwise convolutions are the "depthwise patch" of model patches (Mudrakarta et al., ICLR 2019).

`MobileNetV2Backbone` is the feature extractor alone (``features.*`` names, pooled ``out_dim``-d output)
for use under `taskshare.models.TaskNet`, with an input adapter for taskshare's image tasks (float
[0, 1] batches, possibly 1-channel and small): grayscale is repeated to 3 channels, the batch is resized
to ``image_size`` and normalised with the ImageNet mean/std the checkpoint was trained with.
`MobileNetV2` adds the classifier and is torchvision's forward exactly (inputs already normalised).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.errors import ArtifactError, ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's rounding: nearest multiple of `divisor`, never more than 10% below `v`."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (no bias) -> BN -> ReLU6, names ``0`` and ``1``."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [conv_bn_act(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden),  # depthwise
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]  # linear bottleneck
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _features(width_mult: float) -> tuple[nn.Sequential, int]:
    cin = make_divisible(32 * width_mult)
    last = make_divisible(1280 * max(1.0, width_mult))
    layers: list[nn.Module] = [conv_bn_act(3, cin, stride=2)]
    for t, c, n, s in SETTINGS:
        cout = make_divisible(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    layers.append(conv_bn_act(cin, last, 1))
    return nn.Sequential(*layers), last


def _init(module: nn.Module) -> None:
    """torchvision's initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV2Backbone(nn.Module):
    """Pooled MobileNetV2 features (``out_dim`` = 1280 at width <= 1), for TaskNet heads.

    `input_shape` (C, H, W) of the task's images: 1-channel inputs are repeated to 3 channels. `image_size`:
    resize (bilinear) to this side length first (None: keep the input size). `normalize`: apply the
    ImageNet mean/std (inputs in [0, 1]). The first argument matches taskshare's backbone constructors;
    `features` reuses an existing conv stack instead of building one.
    """

    def __init__(self, input_shape: tuple[int, ...] | None = None, width_mult: float = 1.0,
                 image_size: int | None = None, normalize: bool = True, features: nn.Sequential | None = None):
        super().__init__()
        if width_mult <= 0:
            raise ConfigError(f"MobileNetV2 width multiplier must be positive, got {width_mult}")
        if input_shape is not None and (len(input_shape) != 3 or input_shape[0] not in (1, 3)):
            raise ConfigError(f"MobileNetV2 needs 1- or 3-channel images (C, H, W), got input shape "
                              f"{tuple(input_shape)}: use another backbone (--set model=mlp)")
        self.width_mult = float(width_mult)
        self.image_size = image_size
        self.normalize = normalize
        if features is None:
            self.features, self.out_dim = _features(width_mult)
            _init(self)
        else:  # share an existing network's conv stack (MobileNetV2.backbone)
            self.features, self.out_dim = features, features[-1][0].out_channels

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input adapter: grayscale -> RGB, resize, ImageNet normalisation (no parameters)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if self.normalize:
            mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(self.prepare(x)), 1).flatten(1)

    def load_imagenet(self, path: str | Path | None = None, sha256: str | None = None) -> MobileNetV2Backbone:
        """Load the ImageNet checkpoint's ``features.*`` tensors (strictly; its classifier is dropped)."""
        from taskshare.models.weights import mobilenet_v2_imagenet

        state = mobilenet_v2_imagenet(path, sha256)
        load_strict(self, {k: v for k, v in state.items() if not k.startswith("classifier.")}, path)
        return self


class MobileNetV2(MobileNetV2Backbone):
    """torchvision's MobileNetV2: ``forward(x)`` = classifier(pooled features) on normalised 3-channel input."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__(None, width_mult, None, normalize=False)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.out_dim, num_classes))
        _init(self.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, out_dim). (``features`` is the torchvision name of the conv stack.)"""
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def backbone(self) -> MobileNetV2Backbone:
        """A feature extractor sharing this network's modules (no copy), for TaskNet."""
        return MobileNetV2Backbone(None, self.width_mult, None, normalize=False, features=self.features)

    def load_imagenet(self, path: str | Path | None = None, sha256: str | None = None) -> MobileNetV2:
        from taskshare.models.weights import mobilenet_v2_imagenet

        load_strict(self, mobilenet_v2_imagenet(path, sha256), path)
        return self


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """`load_state_dict(strict=True)` with a one-line ArtifactError instead of torch's multi-line one."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        mine, theirs = set(model.state_dict()), set(state)
        detail = (f"missing {sorted(mine - theirs)[0]!r}" if mine - theirs else
                  f"unexpected {sorted(theirs - mine)[0]!r}" if theirs - mine else
                  str(e).strip().splitlines()[-1].strip())
        raise ArtifactError(f"weights {path or '(ImageNet MobileNetV2)'} do not fit MobileNetV2 width "
                            f"{getattr(model, 'width_mult', '?')} ({detail}): pass a torchvision mobilenet_v2 "
                            "state dict of the same width") from None


def mobilenet_v2(pretrained: bool = True, path: str | Path | None = None, sha256: str | None = None,
                 num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV2:
    """torchvision-style constructor: the ImageNet classifier (sha256-checked, weights_only load) or random init."""
    model = MobileNetV2(num_classes, width_mult)
    if pretrained:
        if num_classes != 1000 or width_mult != 1.0:
            raise ConfigError("the ImageNet MobileNetV2 checkpoint has width 1.0 and 1000 classes: "
                              "use pretrained=False for other shapes, or a backbone with a new head")
        model.load_imagenet(path, sha256)
        if path is None:  # rebuildable from the installed weight package (taskshare.load)
            model.taskshare_builder = {"name": "mobilenet_v2", "pretrained": True}
    return model
