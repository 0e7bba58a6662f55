"""DARTS-like cell networks built from a genotype: PAR's experts (Wang et al., CVPR 2023; DARTS, Liu et al.
2019), and `CellBackbone`, the same network with a fixed genotype as a backbone for any method (``model=par-cell``:
the baselines on PAR's own expert architecture).
PAR's experts: DARTS-like cell networks built from a genotype (Wang et al., CVPR 2023; DARTS, Liu et al. 2019).

An expert is

    stem: conv3x3(in -> stem_multiplier·C) + BN
    cells 0..L-1: cell i reduces the resolution (stride 2) when i in {L//3, 2L//3}; the width stays C
    global average pooling of the last cell -> a (steps·C)-d feature vector (``feature_dim``)
    head: Linear(feature_dim, classes), a slot of the expert's TaskTensors (one head per task)

A cell has two inputs (the outputs of the two previous cells, s0 and s1), each mapped to C channels by a
ReLU-conv1x1-BN preprocessor (a factorized reduction for s0 when the previous cell reduced), ``steps``
intermediate nodes, each the sum of two edges ``op(state[j])`` with j < node, and outputs the concat of the
intermediate nodes. In a reduction cell the edges from the two inputs have stride 2.

Operations (the official PAR space, 6 ops): none, max_pool_3x3, avg_pool_3x3, skip_connect (a factorized
reduction when strided), sep_conv_3x3 (ReLU-dw3x3-pw-BN twice), dil_conv_3x3 (ReLU-dw3x3 dilation 2-pw-BN).

The official expert is C = 64, 4 cells, 4 nodes (256-d features, ~0.1-0.4M parameters); the default here
is sized for a 2-core CPU: C = 16, 4 cells, 4 nodes (64-d features). Differences from the official code,
both so that any input size works: the factorized reduction keeps its BatchNorm (the official code has it
commented out) and pads odd sizes by one pixel, so reductions of 7x7 maps agree across branches.

A `Genotype` lists, per cell type, 2 (op, input) pairs per node; inputs 0 and 1 are the cell inputs and
k >= 2 the node k-2. It is stored as plain lists (``to_dict``/``from_dict``) so experts can be rebuilt from
checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.errors import ConfigError

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
CELL_TYPES = ("normal", "reduce")


# ------------------------------------------------------------------------------------------- operations
class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]).mul(0.0)


class MaxPool3(nn.Module):
    """``nn.MaxPool2d(3, stride, 1)``, the same values, faster on CPU in contiguous format.

    Without autograd (evaluation, relatedness, search accuracy) the 3x3 maximum is taken as two separable
    maxima of shifted views (7x faster than PyTorch's NCHW kernel at 1 thread, exactly equal); with autograd
    PyTorch's kernel runs (its backward is the faster one). perf/par_budget.py measures it.
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.max_pool2d(x, 3, self.stride, 1)
        h, w = x.shape[-2:]
        p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
        r = torch.maximum(torch.maximum(p[..., :, 0:w], p[..., :, 1:w + 1]), p[..., :, 2:w + 2])
        out = torch.maximum(torch.maximum(r[..., 0:h, :], r[..., 1:h + 1, :]), r[..., 2:h + 2, :])
        return out[..., ::self.stride, ::self.stride] if self.stride > 1 else out


class AvgPool3(nn.Module):
    """``nn.AvgPool2d(3, stride, 1, count_include_pad=False)`` as a depthwise convolution with a ones kernel
    divided by the window sizes: the same values up to float summation order, 4-5x faster on CPU in
    contiguous format (forward and backward)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        total = F.conv2d(x, x.new_ones(c, 1, 3, 3), stride=self.stride, padding=1, groups=c)
        count = F.conv2d(x.new_ones(1, 1, *x.shape[-2:]), x.new_ones(1, 1, 3, 3), stride=self.stride, padding=1)
        return total / count


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(cout, affine=affine))


class DilConv(nn.Sequential):
    def __init__(self, c: int, stride: int, affine: bool):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c, c, 3, stride, 2, dilation=2, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine))


class SepConv(nn.Sequential):
    def __init__(self, c: int, stride: int, affine: bool):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine),
                         nn.ReLU(inplace=False), nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine))


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convolutions (odd sizes padded by one pixel)."""

    def __init__(self, cin: int, cout: int, affine: bool):
        super().__init__()
        if cout % 2:
            raise ConfigError(f"factorized reduction needs an even channel count, got {cout}: use an even par.channels")
        self.conv_1 = nn.Conv2d(cin, cout // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(cin, cout // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return MaxPool3(stride)
    if name == "avg_pool_3x3":
        return AvgPool3(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "sep_conv_3x3":
        return SepConv(c, stride, affine)
    if name == "dil_conv_3x3":
        return DilConv(c, stride, affine)
    raise ConfigError(f"unknown cell operation {name!r}: choose from {', '.join(PRIMITIVES)}")


# --------------------------------------------------------------------------------------------- genotype
@dataclass(frozen=True)
class Genotype:
    """Per cell type, (op, input) for the 2 edges of each node, node by node."""

    normal: tuple[tuple[str, int], ...]
    reduce: tuple[tuple[str, int], ...]

    def __post_init__(self):
        for kind in CELL_TYPES:
            edges = getattr(self, kind)
            if len(edges) % 2 or not edges:
                raise ConfigError(f"genotype {kind} cell has {len(edges)} edges: it needs 2 per node")
            for k, (op, src) in enumerate(edges):
                if op not in PRIMITIVES or op == "none":
                    raise ConfigError(f"genotype {kind} edge {k}: {op!r} is not a usable operation")
                if not 0 <= src < 2 + k // 2:
                    raise ConfigError(f"genotype {kind} edge {k}: input {src} does not exist before node {k // 2}")

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, list[list]]:
        return {kind: [[op, int(src)] for op, src in getattr(self, kind)] for kind in CELL_TYPES}

    @classmethod
    def from_dict(cls, d: dict) -> Genotype:
        return cls(**{kind: tuple((str(op), int(src)) for op, src in d[kind]) for kind in CELL_TYPES})

    def __str__(self) -> str:
        return " | ".join(f"{kind}: " + " ".join(f"{op}<{src}" for op, src in getattr(self, kind))
                          for kind in CELL_TYPES)


def reduction_cells(n_cells: int) -> set[int]:
    """Cells that halve the resolution (the DARTS/PAR rule)."""
    return {n_cells // 3, 2 * n_cells // 3}


# ----------------------------------------------------------------------------------------------- expert
class Cell(nn.Module):
    def __init__(self, edges: tuple[tuple[str, int], ...], c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, affine: bool = True):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(c_pp, c, affine) if reduction_prev
                            else ReLUConvBN(c_pp, c, 1, 1, 0, affine))
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine)
        self.inputs = [src for _, src in edges]
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and src < 2 else 1, affine) for op, src in edges)
        self.steps = len(edges) // 2

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            a, b = 2 * i, 2 * i + 1
            states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
        return torch.cat(states[2:], dim=1)


class ExpertNet(nn.Module):
    """A cell network from `genotype` plus a placeholder head (each task binds its own through TaskTensors)."""

    def __init__(self, genotype: Genotype, in_channels: int, channels: int = 16, n_cells: int = 4,
                 stem_multiplier: int = 3):
        super().__init__()
        self.genotype = genotype
        steps = genotype.steps
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, reduction_prev = c_stem, c_stem, False
        cells = []
        for i in range(n_cells):
            reduction = i in reduction_cells(n_cells)
            edges = genotype.reduce if reduction else genotype.normal
            cells.append(Cell(edges, c_pp, c_p, channels, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, steps * channels, reduction
        self.cells = nn.ModuleList(cells)
        self.feature_dim = c_p
        self.head = nn.Linear(c_p, 1)  # placeholder: every task binds its own head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return F.adaptive_avg_pool2d(s1, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def bn_buffer_names(net: nn.Module) -> list[str]:
    """Qualified names of every BatchNorm running statistic (running_mean/var, num_batches_tracked)."""
    return [f"{m_name}.{b}" for m_name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b, t in m.named_buffers(recurse=False) if t is not None]


def build_expert(genotype: Genotype, in_channels: int, channels: int, n_cells: int, stem_multiplier: int,
                 seed: int) -> ExpertNet:
    """An expert with weights drawn from `seed` (independent of the global RNG's state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ExpertNet(genotype, in_channels, channels, n_cells, stem_multiplier)


# A fixed genotype for `CellBackbone` (no search): separable convolutions on both cell inputs in normal cells,
# max-pooling in reduction cells, 4 nodes.
BASELINE_GENOTYPE = Genotype(normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1)) * 4,
                             reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4)


class CellBackbone(nn.Module):
    """PAR's default expert (C = 16, 4 cells, 4 nodes, stem x3) with `BASELINE_GENOTYPE`, as a backbone:
    features (N, 64) for TaskNet heads; 1- or 3-channel images of any size."""

    def __init__(self, input_shape: tuple[int, ...], channels: int = 16, n_cells: int = 4,
                 genotype: Genotype = BASELINE_GENOTYPE):
        super().__init__()
        self.net = ExpertNet(genotype, input_shape[0], channels, n_cells)
        del self.net.head   # the task heads live in TaskNet
        self.out_dim = self.net.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)
