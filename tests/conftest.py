"""Shared fixtures: tiny synthetic task streams (no data packages needed) and a fast run config."""
from __future__ import annotations

import os

import pytest
import torch

# The suite runs with one torch thread by default (xdist runs 2 workers on 2 cores); `make test` reruns the
# convolution-heavy files with TASKSHARE_TEST_THREADS=2 and oneDNN limited to AVX2 (see Makefile).
THREADS = int(os.environ.get("TASKSHARE_TEST_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)

from taskshare import progress  # noqa: E402
from taskshare.data import Stream, Task, TensorDataset  # noqa: E402
from taskshare.config import RunConfig  # noqa: E402

progress.set_quiet(True)  # library progress bars off in tests (the CLI sets it from --quiet)


def make_task(name: str, seed: int, n: int = 96, classes: int = 3, shape=(1, 6, 6)) -> Task:
    """A learnable synthetic task: class means separated in input space, uint8-free float inputs."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, *shape, generator=g) * 2

    def split(m: int) -> TensorDataset:
        y = torch.arange(m) % classes
        x = means[y] + torch.randn(m, *shape, generator=g)
        return TensorDataset(x, y)

    return Task(name, split(n), split(n // 3), split(n // 3), classes, shape)


def gauss_task(name: str, means_seed: int, sample_seed: int, n: int = 120, classes: int = 3,
               shape=(1, 8, 8)) -> Task:
    """Classes at fixed means (from means_seed) plus unit noise (from sample_seed): tasks with the same
    means_seed share their distribution (PAR's relatedness tests)."""
    means = torch.randn(classes, *shape, generator=torch.Generator().manual_seed(means_seed)) * 3
    gen = torch.Generator().manual_seed(sample_seed)

    def split(m: int) -> TensorDataset:
        y = torch.arange(m) % classes
        return TensorDataset(means[y] + torch.randn(m, *shape, generator=gen), y)

    return Task(name, split(n), split(60), split(60), classes, shape)


def train_task(learner, task: Task, index: int, *, epochs: int = 2, batch_size: int = 32,
               seed: int | None = None) -> None:
    """begin_task, `epochs` shuffled passes of observe (generator seed: `seed`, default 100 + index), end_task."""
    learner.begin_task(task, index)
    gen = torch.Generator().manual_seed(100 + index if seed is None else seed)
    for _ in range(epochs):
        for x, y in task.train.batches(batch_size, shuffle=True, generator=gen):
            learner.observe(x, y)
    learner.end_task(task)


def spawn_workers(worker, world: int, out: str) -> None:
    """Run worker(rank, init_file, out) in `world` processes that meet through a fresh file store."""
    import tempfile

    import torch.multiprocessing as mp
    fd, init_file = tempfile.mkstemp(prefix="ddp-init-")
    os.close(fd)
    os.unlink(init_file)  # the file store creates it
    mp.spawn(worker, args=(init_file, out), nprocs=world, join=True)


def make_stream(n_tasks: int = 3, **kw) -> Stream:
    return Stream("synthetic", [make_task(f"t{i}", 100 + i, **kw) for i in range(n_tasks)], "synthetic test stream")


@pytest.fixture
def stream() -> Stream:
    return make_stream()


@pytest.fixture
def cfg() -> RunConfig:
    return RunConfig(epochs=2, batch_size=16, lr=0.05, model="mlp", checkpoint_minutes=1e9)
