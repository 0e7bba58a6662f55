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
  ``shard_batch(reducer, x, y)`` cuts the batch and sets the weights. The lifelong runner
  (``engine.lifelong.run_method`` / ``engine.loop``) does exactly that: ``attach_all`` on the learner after
  ``begin_task`` / ``begin_all`` / a resume and before every step (learners build a new optimizer per task),
  ``broadcast_tensors`` of the learner's tensors from rank 0 at the start of each task, evaluation on every
  rank, files from rank 0 only. A parameter whose gradient is None on some ranks (a task's head absent from
  one shard of a mixed batch) is reduced as zero there and keeps None only if no rank has a gradient.
  Exact for losses that are means over the batch's samples plus sample-free terms: fine-tuning, EWC (its
  Fisher is computed on the full data on every rank), LwF, expert-per-task, joint, patches in transfer
  mode, sequential TAPS (the runner sets its epoch, as it counts samples); up to BatchNorm, below. Refused
  with a one-line error (``Learner.not_data_parallel``): patches-multitask, taps-joint,
  taps-two-stage (sums of per-task means) and PAR (search and gradient clipping on local data);
- per-task gradients (PCGrad, MGDA, CAGrad, AdaTask): the K x D matrix G of each rank is reduced with
  ``mean_`` *before* it is combined, so the combining rule sees the global per-task gradients (combining the
  local ones and averaging the results would be wrong for every nonlinear rule). ``MultiTaskTrainer``
  takes a ``GradReducer`` and does this.

Not covered: BatchNorm statistics (and dropout masks) stay per rank: the model trains on per-shard batch
statistics and each rank keeps its own running averages (rank 0's are the ones written, and are broadcast
at the next task's start); use a model without BatchNorm (the MLP), or SyncBatchNorm on GPUs, when the
result must equal the single-process run. A final global batch smaller than the world size leaves a
rank with no sample (``shard`` then raises a one-line error; the lifelong runner checks every task's batch
sizes up front; choose a batch size / limit that avoids it).

Launch (``batch_size`` is the global batch, as in one process):

    torchrun --nproc_per_node=2 -m taskshare.cli run split-mnist --method finetune,ewc --set batch_size=128
    torchrun --nproc_per_node=2 -m taskshare.cli run BENCHMARK --method M ...

torchrun sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; ``init_from_env`` reads them (nothing to
configure; on one machine everything stays on the loopback interface). Rank 0 writes files (results.json,
checkpoints, artifacts, plots) and prints; the others wait at barriers, so ``--resume`` works as in one
process (every rank reads rank 0's checkpoint). Tested in tests/test_lifelong_ddp.py and
tests/test_multitask_ddp.py.
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
    "DistInfo", "GradReducer", "agree", "attach", "attach_all", "average_gradients", "barrier",
    "broadcast_parameters", "broadcast_tensors", "in_sync", "info", "init_from_env", "is_main", "shard",
    "shard_batch",
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
        """Reduce ``p.grad`` of ``params`` (the same list, in the same order, on every rank) through one flat
        buffer (one all-reduce).

        A parameter may have a gradient on some ranks and ``None`` on others (e.g. the head of a task that is
        in one rank's shard of a mixed batch but not in another's): it counts as zero where it is None, and
        after the reduction it has the reduced gradient if any rank had one and stays None otherwise, as in
        one process with the whole batch (an optimizer skips parameters without a gradient).
        """
        if not self.enabled:
            return
        ps = list(params)
        if not ps:
            return
        dtype = next((p.grad.dtype for p in ps if p.grad is not None), ps[0].dtype)
        present = torch.tensor([p.grad is not None for p in ps], dtype=dtype, device=ps[0].device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p, dtype=dtype)).reshape(-1)
                          for p in ps] + [present])
        self.mean_(flat)                 # the weights are > 0: a flag is > 0 iff some rank had a gradient
        anywhere = (flat[-len(ps):] > 0).tolist()
        off = 0
        for p, keep in zip(ps, anywhere):
            n = p.numel()
            if keep:
                g = flat[off:off + n].view_as(p)
                if p.grad is None:
                    p.grad = g.to(p.dtype).clone()
                else:
                    p.grad.copy_(g)
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


def attach_all(learner: Any, reducer: GradReducer | None) -> int:
    """``attach`` every optimizer of `learner` (``learner.optimizers()``, e.g. after ``begin_task``, which may
    build a new one); returns how many were attached."""
    return sum(attach(opt, reducer) is not None for opt in learner.optimizers())


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


def broadcast_tensors(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``tensors`` (the same list, in the same order, on every rank) in place."""
    if not info().enabled:
        return
    seen: set[int] = set()
    with torch.no_grad():
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                dist.broadcast(t.data, src)


def in_sync(values: Tensor, rtol: float = 1e-6) -> bool:
    """Whether ``values`` (a small float tensor, e.g. checksums of the parameters) agree on every rank within
    ``rtol``; True in one process."""
    if not info().enabled:
        return True
    lo, hi = values.detach().double().clone(), values.detach().double().clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(((hi - lo) <= rtol * (hi.abs() + 1)).all())


def agree(flag: bool, src: int = 0) -> bool:
    """Rank ``src``'s ``flag`` on every rank (for decisions such as "a checkpoint is due" that depend on the
    clock and must be taken together); ``flag`` itself in one process."""
    if not info().enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, src)
    return bool(t.item())
