"""Data-parallel training under ``torchrun`` (gloo on CPU, nccl on GPU) with exact global-batch semantics.

Each step the runner draws the *global* batch exactly as a single process would (same seeded permutation on
every rank) and each rank keeps its shard (``shard``: ``torch.tensor_split`` of the batch indices, so shards
may differ by one sample). A loss is the mean over the global batch, which is the shard means weighted by
``n_r / N``; so every gradient-like quantity is reduced as the *weighted* sum ``sum_r (n_r / N) x_r``
(``GradReducer.mean_``). With these weights the reduced gradients equal the single-process gradients of the
same global batch (up to floating-point summation order), whatever the shard sizes.

Two ways of using it:

- plain data parallelism (the lifelong runner, loss-weighting multi-task methods): backward on the local
  shard, then ``average_gradients(params, n_local, n_global)`` (one all-reduce of one flat buffer) before
  ``optimizer.step()``. This is what ``DistributedDataParallel`` does, minus bucketing/overlap, plus the
  shard-size weights. For code that steps its own optimizer (a lifelong ``Learner.observe``),
  ``attach(optimizer, reducer)`` registers the same reduction as an optimizer step pre-hook and
  ``shard_batch(reducer, x, y)`` cuts the batch and sets the weights;
- per-task gradients (PCGrad, MGDA, CAGrad, AdaTask): the K x D matrix G of each rank is reduced with
  ``mean_`` *before* it is combined, so the combining rule sees the global per-task gradients (combining the
  local ones and averaging the results would be wrong for every nonlinear rule). ``MultiTaskTrainer``
  takes a ``GradReducer`` and does this.

Not covered: BatchNorm statistics stay per rank (use a model without BatchNorm, or SyncBatchNorm, when the
result must equal the single-process run); a final global batch smaller than the world size leaves a rank
with no sample (``shard`` then raises a one-line error; choose a batch size / limit that avoids it).

Launch: ``torchrun --nproc_per_node=2 -m taskshare.multitask.runner BENCHMARK --method M ...``. torchrun
sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; ``init_from_env`` reads them (nothing to configure; on
one machine everything stays on the loopback interface). Rank 0 writes files; the others wait at barriers.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from taskshare.errors import ConfigError

__all__ = [
    "DistInfo", "GradReducer", "attach", "attach_all", "average_gradients", "barrier", "broadcast_parameters",
    "info", "init_from_env", "is_main", "shard", "shard_batch",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info() -> DistInfo:
    """This process's rank and the world size (0 / 1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def is_main() -> bool:
    return info().is_main


def init_from_env(backend: str | None = None) -> DistInfo:
    """Initialise the default process group from torchrun's environment (WORLD_SIZE > 1), else do nothing.

    ``backend`` defaults to gloo (CPU); pass "nccl" for GPUs. Idempotent.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return info()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run in one process (without torchrun)")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world} but {key} is not set: launch with torchrun "
                              "--nproc_per_node=N, which sets it")
    dist.init_process_group(backend or "gloo")
    return info()


def barrier() -> None:
    if info().enabled:
        dist.barrier()


def shard(indices: Tensor, di: DistInfo | None = None) -> Tensor:
    """This rank's contiguous part of a global batch's indices (``torch.tensor_split``; sizes differ by <= 1)."""
    di = di or info()
    if not di.enabled:
        return indices
    if len(indices) < di.world_size:
        raise ConfigError(f"a global batch of {len(indices)} samples cannot be split over {di.world_size} ranks; "
                          "change batch_size or limit so that no batch is smaller than the number of processes")
    return torch.tensor_split(indices, di.world_size)[di.rank]


class GradReducer:
    """Weighted all-reduce of gradient-like tensors across ranks (see the module docstring).

    Call ``set_shard(n_local, n_global)`` before each step; ``mean_(t)`` then replaces ``t`` in place by
    ``sum_r (n_r / N) t_r`` and ``sum_(t)`` by ``sum_r t_r``. With one process both are no-ops.
    """

    def __init__(self, group=None):
        self.group = group
        self.weight = 1.0
        di = info()
        self.enabled = di.enabled
        self.world_size = di.world_size

    def set_shard(self, n_local: int, n_global: int) -> None:
        self.weight = n_local / n_global

    def sum_(self, t: Tensor) -> Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def mean_(self, t: Tensor) -> Tensor:
        if self.enabled:
            t.mul_(self.weight)
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def grads_(self, params: Iterable[Tensor]) -> None:
        """Reduce ``p.grad`` of every parameter that has one, through one flat buffer (one all-reduce)."""
        if not self.enabled:
            return
        ps = [p for p in params if p.grad is not None]
        if not ps:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        self.mean_(flat)
        off = 0
        for p in ps:
            n = p.grad.numel()
            p.grad.copy_(flat[off:off + n].view_as(p.grad))
            off += n


def shard_batch(reducer: GradReducer | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's rows of a global batch (same split as ``shard``), setting ``reducer``'s shard weight."""
    if reducer is None or not reducer.enabled:
        return tensors
    n = len(tensors[0])
    idx = shard(torch.arange(n))
    reducer.set_shard(len(idx), n)
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    return tuple(t[lo:hi] for t in tensors)


def attach(optimizer: torch.optim.Optimizer, reducer: GradReducer | None):
    """Reduce the gradients of ``optimizer``'s parameters across ranks right before each ``step()``.

    For learners that call ``loss.backward(); optimizer.step()`` themselves (the lifelong learners): no
    change inside the learner. Idempotent per optimizer; returns the hook handle (None when not needed).
    """
    if reducer is None or not reducer.enabled or getattr(optimizer, "_taskshare_ddp", False):
        return None

    def hook(opt, args, kwargs):
        reducer.grads_([p for g in opt.param_groups for p in g["params"]])

    optimizer._taskshare_ddp = True
    return optimizer.register_step_pre_hook(hook)


def attach_all(obj: Any, reducer: GradReducer | None) -> int:
    """``attach`` every ``torch.optim.Optimizer`` held in an attribute of ``obj`` (e.g. a learner after
    ``begin_task``, which may build a new optimizer); returns how many were attached."""
    n = 0
    for v in vars(obj).values():
        if isinstance(v, torch.optim.Optimizer) and attach(v, reducer) is not None:
            n += 1
    return n


def average_gradients(params: Iterable[Tensor], n_local: int | None = None, n_global: int | None = None) -> None:
    """Plain data-parallel gradient averaging after a local backward (the lifelong runner's hook).

    With shard sizes given, rank r's gradients are weighted by n_local / n_global (exact global-batch mean
    for uneven shards); without, by 1 / world_size. A no-op in one process.
    """
    di = info()
    if not di.enabled:
        return
    r = GradReducer()
    if n_local is not None and n_global is not None:
        r.set_shard(n_local, n_global)
    else:
        r.weight = 1.0 / di.world_size
    r.grads_(params)


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (all ranks then start identical)."""
    if not info().enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)
