"""Backbones in plain torch (torchvision and timm do not import on the CPU torch build).

Each backbone maps an input batch to features (N, out_dim); the per-task heads live in `TaskNet`.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from taskshare.models.cells import CellBackbone


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU blocks named fc1, relu1, fc2, ... The classic continual-learning MLP
    (784-400-400 by default) and the multi-output benchmarks' MLP encoder (`hidden` from the benchmark)."""

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...] = (400, 400)):
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = math.prod(input_shape)
        for i, h in enumerate(hidden, 1):
            layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
            width = h
        super().__init__(OrderedDict(layers))
        self.out_dim = width


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


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """4 conv3x3-BN-ReLU layers (32, 32, 64, 64) with two max-pools, then a 128-d linear layer."""

    def __init__(self, input_shape: tuple[int, ...], widths: tuple[int, ...] = (32, 32, 64, 64),
                 out_dim: int = 128):
        super().__init__()
        c, h, w = input_shape
        a, b, c2, d = widths
        self.features = nn.Sequential(*_conv_bn(c, a), *_conv_bn(a, b), nn.MaxPool2d(2),
                                      *_conv_bn(b, c2), *_conv_bn(c2, d), nn.MaxPool2d(2), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(d * (h // 4) * (w // 4), out_dim), nn.ReLU())
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool). nf=20 gives the reduced ResNet-18 of GEM (1.09M params)."""

    def __init__(self, input_shape: tuple[int, ...], nf: int = 20):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        stages, cin = [], nf
        for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)]):
            blocks = [BasicBlock(cin, nf * mult, stride), BasicBlock(nf * mult, nf * mult, 1)]
            cin = nf * mult
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.pool(out).flatten(1)


BACKBONES = {
    "mlp": (MLP, "784-400-400 MLP (inputs flattened); the default for MNIST-sized streams"),
    "cnn": (SmallCNN, "4-layer conv net with BatchNorm, 128-d features"),
    "resnet18": (ResNet18, "reduced CIFAR-style ResNet-18 (nf=20, 1.09M parameters)"),
    "par-cell": (CellBackbone, "PAR's default cell expert (C=16, 4 cells) with a fixed genotype: baselines on PAR's architecture"),
    "lenet": (LeNet, "Sener & Koltun's MultiMNIST LeNet (2 conv5 + pool, 50-d features, no BatchNorm)"),
}
