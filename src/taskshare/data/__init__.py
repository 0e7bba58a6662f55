"""Data layer: datasets, tasks, task streams and the benchmark registry.

Data files are read from installed packages (never imported) or from user-given paths; nothing is
ever downloaded.  See :mod:`taskshare.data.benchmarks` for the built-in benchmarks.
"""

from taskshare.data.benchmarks import BENCHMARKS, USER_BENCHMARKS, BenchmarkSpec, build_benchmark
from taskshare.data.datasets import (
    Compose,
    Normalize,
    Permute,
    Stream,
    Task,
    TensorDataset,
    ToFloat,
    split_train_val,
)

__all__ = [
    "Task",
    "Stream",
    "TensorDataset",
    "build_benchmark",
    "BENCHMARKS",
    "USER_BENCHMARKS",
    "BenchmarkSpec",
    "ToFloat",
    "Normalize",
    "Permute",
    "Compose",
    "split_train_val",
]
