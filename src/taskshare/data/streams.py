"""The built-in task streams on MNIST, Fashion-MNIST, AnimalShape and optdigits, and the option parsers
every benchmark builder shares (`benchmarks.py` registers them; `ctrl.py` and `transfer.py` build on them).

All image inputs are float32 in [0, 1] (uint8 storage + a ``ToFloat`` batch transform). Validation is carved
from the official train split with the run seed (``val_fraction``, default 0.1, stratified); the test split
is the dataset's official test split (AnimalShape has none: a fixed 80/20 split with seed 0 is used,
independent of the run seed).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from taskshare.data import sources
from taskshare.data.datasets import Compose, Permute, Stream, Task, TensorDataset, ToFloat, split_train_val
from taskshare.errors import ConfigError

DEFAULT_VAL_FRACTION = 0.1
ANIMAL_TEST_FRACTION = 0.2
ANIMAL_TEST_SEED = 0  # fixed: AnimalShape's test split never depends on the run seed


# ----------------------------------------------------------------------------------------- options
def int_option(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"benchmark.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def fraction_option(value: Any) -> float:
    try:
        frac = float(value)
    except (TypeError, ValueError):
        frac = -1.0
    if isinstance(value, bool) or not 0.0 <= frac < 1.0:
        raise ConfigError(f"benchmark.val_fraction must be a number in [0, 1), got {value!r}")
    return frac


def divisor_option(name: str, value: Any, n_classes: int) -> int:
    n = int_option(name, value)
    if n_classes % n:
        divisors = ", ".join(str(d) for d in range(1, n_classes + 1) if n_classes % d == 0)
        raise ConfigError(f"benchmark.{name} must divide the {n_classes} classes ({divisors}), got {n}")
    return n


def bool_option(name: str, value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise ConfigError(f"benchmark.{name} must be true or false, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------- helpers
def _images(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, 1, H, W), no copy."""
    return x.unsqueeze(1)


def _split(y: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return split_train_val(None, y, val_fraction, seed)


def _whole_task(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    classes: list[str],
    seed: int,
    val_fraction: float,
    transform: Any,
) -> Task:
    x, y = train
    tr, va = _split(y, val_fraction, seed)
    return Task(
        name=name,
        train=TensorDataset(x[tr], y[tr], transform),
        val=TensorDataset(x[va], y[va], transform),
        test=TensorDataset(test[0], test[1], transform),
        num_classes=len(classes),
        input_shape=tuple(x.shape[1:]),
        classes=list(classes),
    )


def _class_split_stream(
    stream_name: str,
    prefix: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    class_names: list[str],
    n_tasks: int,
    seed: int,
    val_fraction: float,
    transform: Any,
    description: str,
) -> Stream:
    """Tasks of consecutive class groups ({0,1}, {2,3}, ...), labels remapped to 0..k-1 per task."""
    (x, y), (xt, yt) = train, test
    tr_all, va_all = _split(y, val_fraction, seed)  # one stratified split of the whole train set
    n_classes = len(class_names)
    per_task = n_classes // n_tasks
    tasks = []
    for t in range(n_tasks):
        group = list(range(t * per_task, (t + 1) * per_task))
        remap = torch.full((n_classes,), -1, dtype=torch.int64)
        remap[group] = torch.arange(per_task)

        def pick(idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return idx[remap[labels[idx]] >= 0]

        tr, va = pick(tr_all, y), pick(va_all, y)
        te = (remap[yt] >= 0).nonzero().flatten()
        tasks.append(
            Task(
                name=f"{prefix}-" + "-".join(str(c) for c in group),
                train=TensorDataset(x[tr], remap[y[tr]], transform),
                val=TensorDataset(x[va], remap[y[va]], transform),
                test=TensorDataset(xt[te], remap[yt[te]], transform),
                num_classes=per_task,
                input_shape=tuple(x.shape[1:]),
                classes=[class_names[c] for c in group],
            )
        )
    return Stream(name=stream_name, tasks=tasks, description=description)


def rotate_images(x: torch.Tensor, degrees: float, *, chunk_size: int = 8192) -> torch.Tensor:
    """Rotate uint8 images (N, C, H, W) counter-clockwise by ``degrees`` (bilinear, zero fill), in chunks.

    The same rotation applies to every image, so the sampling is computed once with
    ``affine_grid``/``grid_sample``: for small images as an (H*W, H*W) interpolation matrix that is
    applied with one matmul per chunk, for large ones by sampling all images as channels of one
    grid.  Returns a new tensor of x's dtype (rounded); 0 degrees returns ``x`` itself.
    """
    if float(degrees) % 360 == 0:
        return x
    n, c, h, w = x.shape
    rad = math.radians(float(degrees))
    cos, sin = math.cos(rad), math.sin(rad)
    # affine_grid maps output coords to input coords (x right, y down): this theta turns content CCW.
    theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    flat = x.reshape(n * c, h * w)
    out = torch.empty_like(x)
    out_flat = out.view(n * c, h * w)
    hi = 255 if x.dtype == torch.uint8 else None

    def store(i: int, values: torch.Tensor) -> None:
        if x.dtype.is_floating_point:
            out_flat[i: i + chunk_size] = values.to(x.dtype)
        else:
            out_flat[i: i + chunk_size] = values.round_().clamp_(0, hi).to(x.dtype)

    if h * w <= 4096:
        basis = torch.eye(h * w, dtype=torch.float32).view(1, h * w, h, w)
        matrix = F.grid_sample(basis, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        matrix = matrix.view(h * w, h * w)  # matrix[j, p]: weight of input pixel j in output pixel p
        for i in range(0, n * c, chunk_size):
            store(i, flat[i: i + chunk_size].to(torch.float32) @ matrix)
    else:
        for i in range(0, n * c, chunk_size):
            part = flat[i: i + chunk_size].to(torch.float32).view(1, -1, h, w)  # images as channels
            rotated = F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            store(i, rotated.view(-1, h * w))
    return out


# -------------------------------------------------------------------------------------- benchmarks
def _mnist_pair() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    (x, y), (xt, yt) = sources.load_mnist("train"), sources.load_mnist("test")
    return (_images(x), y), (_images(xt), yt)


def _fashion_pair() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    (x, y), (xt, yt) = sources.load_fashion_mnist("train"), sources.load_fashion_mnist("test")
    return (_images(x), y), (_images(xt), yt)


def build_split_mnist(*, seed: int, val_fraction: float, n_tasks: int = 5) -> Stream:
    n_tasks = divisor_option("n_tasks", n_tasks, 10)
    train, test = _mnist_pair()
    return _class_split_stream(
        "split-mnist", "mnist", train, test, sources.MNIST_CLASSES, n_tasks, seed, val_fraction, ToFloat(),
        f"Split-MNIST: {n_tasks} tasks of {10 // n_tasks} digit classes, labels 0..{10 // n_tasks - 1} per task",
    )


def build_split_fashion(*, seed: int, val_fraction: float, n_tasks: int = 5) -> Stream:
    n_tasks = divisor_option("n_tasks", n_tasks, 10)
    train, test = _fashion_pair()
    return _class_split_stream(
        "split-fashion", "fashion", train, test, sources.FASHION_CLASSES, n_tasks, seed, val_fraction, ToFloat(),
        f"Split-Fashion-MNIST: {n_tasks} tasks of {10 // n_tasks} classes, labels 0..{10 // n_tasks - 1} per task",
    )


def build_permuted_mnist(*, seed: int, val_fraction: float, n_tasks: int = 10) -> Stream:
    n_tasks = int_option("n_tasks", n_tasks)
    (x, y), (xt, yt) = _mnist_pair()
    tr, va = _split(y, val_fraction, seed)
    # ONE uint8 tensor per split, shared by every task; each task only differs in its transform.
    x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
    g = torch.Generator()
    g.manual_seed(int(seed))
    tasks = []
    for t in range(n_tasks):
        transform = Compose([Permute(torch.randperm(28 * 28, generator=g)), ToFloat()])
        tasks.append(
            Task(
                name=f"permuted-{t}",
                train=TensorDataset(x_tr, y_tr, transform),
                val=TensorDataset(x_va, y_va, transform),
                test=TensorDataset(xt, yt, transform),
                num_classes=10,
                input_shape=(1, 28, 28),
                classes=list(sources.MNIST_CLASSES),
            )
        )
    return Stream(
        "permuted-mnist", tasks,
        f"Permuted-MNIST: {n_tasks} tasks, each a fixed pixel permutation of MNIST drawn from the seed (task 0 too), 10 classes",
    )


def build_rotated_mnist(*, seed: int, val_fraction: float, n_tasks: int = 5) -> Stream:
    n_tasks = int_option("n_tasks", n_tasks)
    (x, y), (xt, yt) = _mnist_pair()
    tr, va = _split(y, val_fraction, seed)
    x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
    transform = ToFloat()
    tasks = []
    for t in range(n_tasks):
        degrees = t * 180.0 / n_tasks
        tasks.append(
            Task(
                name=f"rotated-{degrees:g}",
                train=TensorDataset(rotate_images(x_tr, degrees), y_tr, transform),
                val=TensorDataset(rotate_images(x_va, degrees), y_va, transform),
                test=TensorDataset(rotate_images(xt, degrees), yt, transform),
                num_classes=10,
                input_shape=(1, 28, 28),
                classes=list(sources.MNIST_CLASSES),
            )
        )
    return Stream(
        "rotated-mnist", tasks,
        f"Rotated-MNIST: {n_tasks} tasks, task i rotated counter-clockwise by i*180/{n_tasks} degrees, 10 classes",
    )


def _optdigits_28() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(_images(x).to(torch.float32) / 16.0, size=(28, 28), mode="bilinear", align_corners=False)

    (x, y), (xt, yt) = sources.load_optdigits("train"), sources.load_optdigits("test")
    return (up(x), y), (up(xt), yt)


def build_domain_stream(*, seed: int, val_fraction: float) -> Stream:
    if not sources.fashion_mnist_available():
        sources.load_fashion_mnist("train")  # raises the one-line DataError with the fix
    tasks = []
    train, test = _mnist_pair()
    tasks.append(_whole_task("mnist", train, test, sources.MNIST_CLASSES, seed, val_fraction, ToFloat()))
    train, test = _fashion_pair()
    tasks.append(_whole_task("fashion-mnist", train, test, sources.FASHION_CLASSES, seed, val_fraction, ToFloat()))
    xa, ya = sources.load_animal_shape()
    xa = _images(xa)
    keep, held = split_train_val(None, ya, ANIMAL_TEST_FRACTION, ANIMAL_TEST_SEED)
    tasks.append(
        _whole_task("animal-shape", (xa[keep], ya[keep]), (xa[held], ya[held]), sources.ANIMAL_CLASSES, seed, val_fraction, ToFloat())
    )
    train, test = _optdigits_28()  # already float32 in [0, 1]
    tasks.append(_whole_task("optdigits", train, test, sources.MNIST_CLASSES, seed, val_fraction, None))
    return Stream(
        "domain-stream", tasks,
        "Domain sequence MNIST -> Fashion-MNIST -> AnimalShape -> optdigits (upsampled to 28x28), 10 classes each, input (1, 28, 28)",
    )


def build_digits_tiny(*, seed: int, val_fraction: float, n_tasks: int = 5) -> Stream:
    n_tasks = divisor_option("n_tasks", n_tasks, 10)
    (x, y), (xt, yt) = sources.load_optdigits("train"), sources.load_optdigits("test")
    return _class_split_stream(
        "digits-tiny", "digits", (_images(x), y), (_images(xt), yt), sources.MNIST_CLASSES, n_tasks, seed,
        val_fraction, ToFloat(1 / 16),
        f"Tiny split digits for tests: optdigits 8x8 (values /16), {n_tasks} tasks of {10 // n_tasks} classes",
    )
