"""The lifelong runner: a stream of tasks through one learner, with metrics, artifacts and checkpoints.

For each method it writes ``OUT/<method>/``:

- ``results.json``: benchmark, method, seed, tasks, acc_matrix (R[i][j]: test accuracy on task j after
  training task i; null for tasks not yet seen; offline learners such as joint have null rows before the
  last), avg_acc, bwt, fwt (null: undefined for task-incremental heads, which cannot predict unseen
  tasks), forgetting, val_acc and val_avg (validation accuracy of every task at the end: what to select
  hyper-parameters on; nothing ever selects on test), params,
  artifact_bytes, time_s, peak_rss_mb (rank 0's), world_size (processes: 1, or N under torchrun), config,
  versions;
- ``artifacts/base.safetensors`` (the shared tensors) and ``artifacts/<task>.{safetensors,json}`` (each
  task's own tensors, loadable alone onto the base);
- ``checkpoint.safetensors`` while the run is in progress: written atomically at the end of every task
  and at the end of an epoch when ``checkpoint_minutes`` have passed, with the RNG state. ``resume=True``
  continues from it and ends with the same results as an uninterrupted run (every random draw is derived
  from (seed, task, epoch), and checkpoints hold optimizer moments).

Data parallelism (``torchrun --nproc_per_node=N -m taskshare.cli run BENCHMARK --method M ...``, see
``engine.distributed``): every rank draws the same global batches and trains on its shard, the gradients are
reduced with shard-size weights before each optimizer step (the reducer is attached to the learner's
optimizers, re-attached whenever the learner builds a new one), and the learner's tensors are broadcast from
rank 0 at the start of each task (and of an offline run), so the results equal the one-process run with the
same ``batch_size`` (the global batch) up to floating-point summation order. Every rank evaluates; rank 0
alone writes checkpoints, artifacts and results.json, and the others wait for it at barriers (they return
rank 0's results). Methods whose loss is not a mean over the batch's samples, or that search or clip on
their own gradients, are refused (``Learner.not_data_parallel``); after every epoch the ranks compare parameter
checksums, so a learner stepping an optimizer without the reduction stops with a TrainingError instead of
silently diverging. BatchNorm statistics (and dropout masks) are per rank, so models with them train close
to, not exactly like, one process.
"""
from __future__ import annotations

import dataclasses

import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskshare.core.paths import safe_name
from taskshare import __version__, progress
from taskshare.core import TaskTensors
from taskshare.core.checkpoint import check_lifelong, restoring
from taskshare.core.serialize import atomic_write_json, load_state, read_json, save_state, save_tensors
from taskshare.engine import distributed as ddp
from taskshare.config import RunConfig, check_options
from taskshare.engine.outdir import MIN_FREE_BYTES, prepare_out
from taskshare.engine.loop import NonFiniteGuard, evaluate, train_epoch, train_mixed_epoch
from taskshare.errors import ArtifactError, ConfigError, TrainingError
from taskshare.methods import METHODS
from taskshare.methods.base import task_seed
from taskshare.results.metrics import average_accuracy, backward_transfer, forgetting

CHECKPOINT = "checkpoint.safetensors"
# results.json keys (at any depth) that measure the machine, not the method: the only values that may differ
# between two runs with the same seed and settings (tests/test_reproducible_outputs.py)
TIMING_FIELDS = ("time_s", "peak_rss_mb", "timing")
# settings that do not change results: a run may be resumed with other values
_NOT_IDENTITY = ("device", "checkpoint_minutes", "eval_batch_size")


def _refuse_data_parallel(cls, method: str) -> None:
    """Learners that cannot train exactly under data parallelism say why in ``not_data_parallel``."""
    if cls.not_data_parallel:
        raise ConfigError(f"--method {method} cannot run data-parallel ({cls.not_data_parallel}): run it in "
                          "one process (without torchrun)")


def _check_shards(learner, tasks, cfg: RunConfig, world: int) -> None:
    """Every global batch must leave each rank enough samples (a rank without a step would hang the others)."""
    need = 2 if getattr(learner, "has_train_bn", False) else 1  # patches skip a BN step on one sample
    sizes = [sum(len(t.train) for t in tasks)] if learner.offline else [len(t.train) for t in tasks]
    for n in sizes:
        smallest = min(n, cfg.batch_size) if n % cfg.batch_size == 0 else n % cfg.batch_size
        if n and smallest // world < need:
            raise ConfigError(f"a batch of {smallest} samples leaves fewer than {need} per process with {world} "
                              f"processes: change batch_size or limit so that every batch (also the last of an "
                              f"epoch, {n} samples in all) has at least {need * world}")


def _learner_tensors(learner) -> list[torch.Tensor]:
    """The learner's network tensors (shared, base and every task's), in the same order on every rank."""
    tt = getattr(learner, "tt", None)
    if isinstance(tt, TaskTensors):
        out = list(tt.shared_named_tensors().values()) + list(tt.base_tensors().values())
        for task in tt.tasks:
            out += list(tt.tensors(task).values())
        return out
    net = getattr(learner, "net", None)
    return list(net.parameters()) + list(net.buffers()) if net is not None else []


def _check_in_sync(learner, where: str) -> None:
    """Data parallel: the ranks' parameters must be equal (checksums); else an optimizer stepped unreduced."""
    ps = [t for t in _learner_tensors(learner) if isinstance(t, torch.nn.Parameter)]
    if not ps:
        return
    with torch.no_grad():
        sums = torch.stack([sum(p.double().sum() for p in ps), sum(p.double().pow(2).sum() for p in ps)])
    if not ddp.in_sync(sums.cpu()):
        raise TrainingError(f"{where}: the processes' parameters differ, so some optimizer of the learner stepped "
                            "without the data-parallel gradient reduction; run this method in one process "
                            "(without torchrun)")


def versions() -> dict[str, str]:
    return {"taskshare": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _identity(benchmark: str, method: str, cfg: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: benchmark, method and every setting that changes results."""
    config = cfg.to_dict() if isinstance(cfg, RunConfig) else cfg
    conf = {k: v for k, v in config.items() if k not in _NOT_IDENTITY}
    conf["methods"] = {method: (config.get("methods") or {}).get(method, {})}
    return {"benchmark": benchmark, "method": method, "config": conf}


def finished_run(path: Path, identity: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """--resume of a finished run: its results when made with the same settings, else a one-line refusal."""
    done = read_json(path, "results")
    try:
        same = _identity(done["benchmark"], done["method"], done["config"]) == identity
    except (KeyError, TypeError, AttributeError):
        raise ArtifactError(f"{path} is not a taskshare results file (benchmark, method or config missing): "
                            "delete it or run without --resume to start over") from None
    if not same:
        raise ConfigError(f"{path.parent} holds a finished run made with other settings: resume with the same "
                          "benchmark, method and options, or run without --resume to start over")
    say(f"[{identity['method']}] already complete in {path.parent}: keeping its results")
    return done


def run_method(stream, method: str, cfg: RunConfig, out_dir: str | Path, *, benchmark: str | None = None,
               resume: bool = False, quiet: bool = True,
               on_checkpoint: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train `method` over `stream` and write OUT/<method>/results.json; returns the results dict."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose from {', '.join(METHODS)} (taskshare list)")
    cls = METHODS[method]
    di = ddp.info()
    if di.enabled:
        _refuse_data_parallel(cls, method)
    options = check_options(cls.Options, cfg.methods.get(method, {}), method)
    benchmark = benchmark or stream.name
    run_dir = Path(out_dir) / method
    ckpt_path = run_dir / CHECKPOINT
    identity = _identity(benchmark, method, cfg)
    quiet = quiet or not di.is_main
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    if resume and (run_dir / "results.json").exists() and not ckpt_path.exists():
        return finished_run(run_dir / "results.json", identity, say)

    tasks = [t.limit(cfg.limit, seed=cfg.seed) if cfg.limit else t for t in stream.tasks]
    names = [t.name for t in tasks]
    torch.manual_seed(cfg.seed)
    learner_cfg = cfg  # model=auto on a stream that names its backbone (transfer benchmarks) means that one
    if cfg.model == "auto" and getattr(stream, "default_model", ""):
        learner_cfg = dataclasses.replace(cfg, model=stream.default_model)
    learner = cls(learner_cfg, options, tasks[0].input_shape)
    device = learner.device
    if di.is_main:  # room for a checkpoint (tensors + optimizer moments, twice during the atomic rename)
        need = 4 * sum(t.numel() * t.element_size() for t in _learner_tensors(learner))
        prepare_out(run_dir, "--out", need_bytes=max(MIN_FREE_BYTES, need))
    reducer = ddp.GradReducer() if di.enabled else None
    if di.enabled:
        _check_shards(learner, tasks, cfg, di.world_size)
    T = len(tasks)
    rows: list[list[float | None]] = []
    next_task, next_epoch, elapsed = 0, 0, 0.0
    saved_state = None
    if resume and ckpt_path.exists():
        ckpt = check_lifelong(load_state(ckpt_path)[0], ckpt_path, identity, n_tasks=len(tasks), epochs=cfg.epochs,
                              offline=cls.offline)
        saved_state = ckpt["learner"]
        rows = ckpt["rows"]
        next_task, next_epoch, elapsed = ckpt["task"], ckpt["epoch"], ckpt["elapsed"]
        with restoring(ckpt_path):
            learner.load_state_dict(saved_state)
        torch.set_rng_state(ckpt["rng"])
        ddp.attach_all(learner, reducer)
        say(f"[{method}] resuming at task {next_task + 1}/{T}, epoch {next_epoch} from {ckpt_path}")

    start = time.perf_counter() - elapsed
    last_ckpt = time.monotonic()

    def checkpoint(task_index: int, epoch: int) -> None:
        nonlocal last_ckpt
        if di.is_main:  # data parallel: rank 0 writes, the others wait until the file is complete
            state = {"identity": identity, "learner": learner.state_dict(), "rows": rows,
                     "task": task_index, "epoch": epoch, "elapsed": time.perf_counter() - start,
                     "rng": torch.get_rng_state()}
            save_state(ckpt_path, state)
        ddp.barrier()
        last_ckpt = time.monotonic()
        if on_checkpoint is not None:
            on_checkpoint(ckpt_path)
        if os.environ.get("TASKSHARE_CRASH_AFTER_CHECKPOINT"):  # used by the kill-and-resume test
            os._exit(137)

    def due() -> bool:  # rank 0's clock decides for every rank
        return ddp.agree(time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60)

    def prepare() -> None:
        """Data parallel: the reducer on the (new) optimizers (the loop re-checks before every step)."""
        ddp.attach_all(learner, reducer)

    def evaluate_row(upto: int) -> list[float | None]:
        row: list[float | None] = [None] * T
        with progress.bar(upto + 1, f"{method} test", unit="task", quiet=quiet) as bar:
            for j in range(upto + 1):
                row[j] = evaluate(learner, tasks[j].test, names[j], cfg.eval_batch_size, device)
                bar.update(1)
        return row

    if cls.offline:
        learner.begin_all(tasks)
        if saved_state is not None:
            with restoring(ckpt_path):
                learner.load_state_dict(saved_state)
        ddp.broadcast_tensors(_learner_tensors(learner))
        prepare()
        datasets = [t.train for t in tasks]
        n_batches = sum(-(-len(d) // cfg.batch_size) for d in datasets)
        guard = NonFiniteGuard(lambda: f"{method}, epoch {epoch + 1}", reducer)
        with progress.bar(n_batches * (cfg.epochs - next_epoch), f"{method} (all tasks)", quiet=quiet) as bar:
            for epoch in range(next_epoch, cfg.epochs):
                gen = torch.Generator().manual_seed(task_seed(cfg.seed, 0, salt=100 + epoch))
                train_mixed_epoch(learner, datasets, cfg.batch_size, gen, device, guard, bar, reducer)
                if reducer is not None:
                    _check_in_sync(learner, f"{method}, epoch {epoch + 1}")
                if epoch + 1 < cfg.epochs and due():
                    checkpoint(0, epoch + 1)
        rows = [[None] * T for _ in range(T - 1)] + [evaluate_row(T - 1)]
    else:
        for i in range(next_task, T):
            task = tasks[i]
            first_epoch = next_epoch if i == next_task else 0
            ddp.broadcast_tensors(_learner_tensors(learner))  # ranks agree (before begin_task: LwF's teacher)
            learner.begin_task(task, i)
            if first_epoch > 0:  # mid-task resume: restore moments and method state after begin_task
                with restoring(ckpt_path):
                    learner.load_state_dict(saved_state)
            prepare()
            n_batches = -(-len(task.train) // cfg.batch_size)
            guard = NonFiniteGuard(lambda: f"{method}, task {task.name}, epoch {epoch + 1}", reducer)
            with progress.bar(n_batches * (cfg.epochs - first_epoch), f"{method} {i + 1}/{T} {task.name}",
                              quiet=quiet) as bar:
                for epoch in range(first_epoch, cfg.epochs):
                    gen = torch.Generator().manual_seed(task_seed(cfg.seed, i, salt=100 + epoch))
                    if reducer is not None and hasattr(learner, "set_epoch"):
                        learner.set_epoch(epoch)  # TAPS counts samples it sees: here a shard, not the batch
                    train_epoch(learner, task.train, cfg.batch_size, gen, device, guard, bar, reducer)
                    if reducer is not None:
                        _check_in_sync(learner, f"{method}, task {task.name}, epoch {epoch + 1}")
                    if epoch + 1 < cfg.epochs and due():
                        checkpoint(i, epoch + 1)
            learner.end_task(task)
            rows.append(evaluate_row(i))
            say(f"[{method}] task {i + 1}/{T} {task.name}: test accuracy on seen tasks "
                + " ".join(f"{a:.3f}" for a in rows[-1] if a is not None))
            checkpoint(i + 1, 0)

    # validation accuracy of every task at the end: what hyper-parameters may be chosen on (never test)
    val_acc = [evaluate(learner, t.val, t.name, cfg.eval_batch_size, device) for t in tasks]
    time_s = time.perf_counter() - start
    if di.is_main:
        results = _results(learner, benchmark, method, cfg, names, rows, val_acc, time_s, run_dir)
        atomic_write_json(run_dir / "results.json", results)
        if ckpt_path.exists():
            ckpt_path.unlink()
    ddp.barrier()
    if not di.is_main:
        results = read_json(run_dir / "results.json", "results")
    say(f"[{method}] avg acc {results['avg_acc']:.4f}, wrote {run_dir / 'results.json'}")
    return results


def save_artifacts(learner, names: list[str], art_dir: Path) -> tuple[dict[str, int], int]:
    """base.safetensors (shared tensors) + one artifact per task; returns ({task: bytes}, base bytes)."""
    tt = learner.tt
    base = save_tensors(art_dir / "base.safetensors", tt.shared_named_tensors(),
                        {"base_fingerprint": tt.fingerprint()})
    sizes = {name: learner.save_artifact(name, art_dir / safe_name(name)) for name in names}
    return sizes, base


def _results(learner, benchmark, method, cfg, names, rows, val_acc, time_s, run_dir) -> dict[str, Any]:
    sizes, _ = save_artifacts(learner, names, run_dir / "artifacts")
    base = learner.tt.count_shared()
    added = [learner.added_parameters(n) for n in names]
    final = rows[-1]
    complete = all(rows[j][j] is not None for j in range(len(rows)))
    return {
        "benchmark": benchmark, "method": method, "seed": cfg.seed, "tasks": names,
        "acc_matrix": rows,
        "avg_acc": average_accuracy(rows) if complete else sum(final) / len(final),
        "bwt": backward_transfer(rows) if complete else None,
        "fwt": None,
        "forgetting": forgetting(rows) if complete else None,
        "val_acc": val_acc, "val_avg": sum(val_acc) / len(val_acc),
        "params": {"base": base, "added_per_task": added, "total": base + sum(added)},
        "artifact_bytes": sizes,
        "time_s": round(time_s, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
        "world_size": ddp.info().world_size,
        "config": cfg.to_dict(), "versions": versions(),
        **learner.extra_results(),
    }
