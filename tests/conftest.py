"""Shared fixtures: tiny synthetic task streams (no data packages needed) and a fast run config."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from taskshare.data import Stream, Task, TensorDataset  # noqa: E402
from taskshare.engine.config import RunConfig  # noqa: E402


def make_task(name: str, seed: int, n: int = 96, classes: int = 3, shape=(1, 6, 6)) -> Task:
    """A learnable synthetic task: class means separated in input space, uint8-free float inputs."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, *shape, generator=g) * 2

    def split(m: int) -> TensorDataset:
        y = torch.arange(m) % classes
        x = means[y] + torch.randn(m, *shape, generator=g)
        return TensorDataset(x, y)

    return Task(name, split(n), split(n // 3), split(n // 3), classes, shape)


def make_stream(n_tasks: int = 3, **kw) -> Stream:
    return Stream("synthetic", [make_task(f"t{i}", 100 + i, **kw) for i in range(n_tasks)], "synthetic test stream")


@pytest.fixture
def stream() -> Stream:
    return make_stream()


@pytest.fixture
def cfg() -> RunConfig:
    return RunConfig(epochs=2, batch_size=16, lr=0.05, model="mlp", checkpoint_minutes=1e9)
