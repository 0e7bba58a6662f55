"""The training and evaluation loops: batches in, learner steps, nothing else in the hot path.

Per step the loop does what a hand-written PyTorch loop does (slice a batch, move it, one optimizer step)
plus a non-finite check that costs one tensor add per step and one sync every `CHECK_EVERY` steps.

Data parallelism (``reducer=`` a ``engine.distributed.GradReducer``, under torchrun): every rank draws the same
global batch (same generator), keeps its shard (``shard_batch``, which sets the shard weight n_r / N) and the
reducer is attached to the learner's optimizer(s) (``attach_all``, checked before every step, so an optimizer
built in ``begin_task`` or on resume is covered), so the reduced gradients are those of the global batch.
The guard then checks the global loss (the weighted sum over ranks), so every rank stops together.
"""
from __future__ import annotations

import math

from collections.abc import Callable, Sequence

import torch

from taskshare.engine.distributed import GradReducer, attach_all, shard_batch
from taskshare.errors import TrainingError

CHECK_EVERY = 50


class NonFiniteGuard:
    """Accumulates losses as a tensor and checks them for NaN/inf every CHECK_EVERY steps and at flush.

    With an enabled ``reducer`` each loss (a shard's mean) is weighted by the current shard weight and the
    totals are summed over ranks at each check: the global-batch losses, the same verdict on every rank.
    """

    def __init__(self, where: Callable[[], str], reducer: GradReducer | None = None):
        self.where = where
        self.reducer = reducer if reducer is not None and reducer.enabled else None
        self.total: torch.Tensor | None = None
        self.count = 0
        self.steps = 0
        self.last = float("nan")
        self.epoch_sum, self.epoch_count = 0.0, 0   # since `epoch_mean` was last called

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        if self.reducer is not None:
            loss = loss * self.reducer.weight
        self.total = loss if self.total is None else self.total + loss
        self.count += 1
        self.steps += 1
        if self.steps % CHECK_EVERY == 0:
            self.flush()

    def flush(self) -> float:
        """Raise TrainingError on a non-finite loss; return the mean loss since the last flush."""
        if self.total is None:
            return self.last
        if self.reducer is not None:  # every rank flushes at the same steps (same number of batches)
            self.total = self.reducer.sum_(self.total.reshape(1).clone())[0]
        value, n = float(self.total), self.count
        self.total, self.count = None, 0
        if not math.isfinite(value):
            raise TrainingError(f"non-finite loss ({value}) in {self.where()}: lower the learning rate "
                                "(--set lr=...) or a regularizer weight, or train in fp32 if you use --precision bf16; "
                                "the last good checkpoint is kept")
        self.last = value / n
        self.epoch_sum, self.epoch_count = self.epoch_sum + value, self.epoch_count + n
        return self.last

    def epoch_mean(self) -> float | None:
        """The mean loss of the steps since the previous call (flushing first); None without steps."""
        self.flush()
        mean = self.epoch_sum / self.epoch_count if self.epoch_count else None
        self.epoch_sum, self.epoch_count = 0.0, 0
        return mean


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch only when needed (`.to` on the same device still costs a dispatch per call)."""
    return t if t.device == device else t.to(device, non_blocking=True)


def train_epoch(learner, dataset, batch_size: int, generator: torch.Generator, device: torch.device,
                guard: NonFiniteGuard, progress=None, reducer: GradReducer | None = None) -> float:
    """One shuffled pass over `dataset` (a TensorDataset) through `learner.observe` (this rank's shards of
    the global batches with an enabled `reducer`)."""
    ddp = reducer is not None and reducer.enabled
    for x, y in dataset.batches(batch_size, shuffle=True, generator=generator):
        if ddp:
            x, y = shard_batch(reducer, x, y)
            attach_all(learner, reducer)
        guard.add(learner.observe(to_device(x, device), to_device(y, device)))
        if progress is not None:
            progress.update(1)
    return guard.flush()


def mixed_batches(datasets: Sequence, batch_size: int, generator: torch.Generator):
    """Shuffled batches over the union of several datasets: (x, y, task_ids).

    One permutation over all (task, index) pairs; per batch, each task's samples are gathered and
    transformed together (its own transform), so it costs a handful of tensor ops per batch.
    """
    sizes = torch.tensor([len(d) for d in datasets])
    offsets = torch.cumsum(sizes, 0) - sizes
    owner = torch.repeat_interleave(torch.arange(len(datasets)), sizes)
    order = torch.randperm(int(sizes.sum()), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        tid = owner[idx]
        xs, ys, ts = [], [], []
        for t in torch.unique(tid).tolist():
            local = idx[tid == t] - offsets[t]
            x, y = datasets[t].take(local)
            xs.append(x)
            ys.append(y)
            ts.append(torch.full((len(local),), t, dtype=torch.long))
        yield torch.cat(xs), torch.cat(ys), torch.cat(ts)


def train_mixed_epoch(learner, datasets: Sequence, batch_size: int, generator: torch.Generator,
                      device: torch.device, guard: NonFiniteGuard, progress=None,
                      reducer: GradReducer | None = None) -> float:
    ddp = reducer is not None and reducer.enabled
    for x, y, tid in mixed_batches(datasets, batch_size, generator):
        if ddp:
            x, y, tid = shard_batch(reducer, x, y, tid)
            attach_all(learner, reducer)
        guard.add(learner.observe_mixed(to_device(x, device), to_device(y, device), to_device(tid, device)))
        if progress is not None:
            progress.update(1)
    return guard.flush()


def evaluate(learner, dataset, task_name: str, batch_size: int, device: torch.device) -> float:
    """Accuracy (fraction) of `learner` on `dataset` for task `task_name`."""
    correct = torch.zeros((), dtype=torch.long)
    total = 0
    for x, y in dataset.batches(batch_size, shuffle=False):
        logits = learner.predict(to_device(x, device), task_name)
        correct += (logits.argmax(1).cpu() == y).sum()
        total += len(y)
    if total == 0:
        raise TrainingError(f"task {task_name}: the evaluation split is empty; check the data")
    return int(correct) / total
