"""The lifelong driver: a stream of tasks through one learner, with metrics, artifacts and checkpoints
(on the one run engine, `engine.run`).

For each method it writes ``OUT/<method>/``:

- ``results.json``: benchmark, method, seed, tasks, acc_matrix (R[i][j]: test accuracy on task j after
  training task i; null for tasks not yet seen; offline learners such as joint have null rows before the
  last), avg_acc, bwt, fwt (null: undefined for task-incremental heads, which cannot predict unseen
  tasks), forgetting, val_acc and val_avg (validation accuracy of every task at the end: what to select
  hyper-parameters on; nothing ever selects on test), params,
  artifact_bytes, time_s, peak_rss_mb (rank 0's), world_size (processes: 1, or N under torchrun), config,
  identity (what --resume compares), versions, and the learner's extra_results (PAR: decisions, timing);
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taskshare import progress
from taskshare.config import RunConfig, check_options
from taskshare.core.checkpoint import check_lifelong, restoring
from taskshare.core.paths import safe_name
from taskshare.core.serialize import save_tensors
from taskshare.engine import distributed as ddp
from taskshare.engine.loop import NonFiniteGuard, evaluate, train_epoch, train_mixed_epoch
from taskshare.engine.run import CHECKPOINT, TIMING_FIELDS, Run, identity, state_bytes, versions
from taskshare.errors import ConfigError, TrainingError
from taskshare.methods import METHODS
from taskshare.methods.base import task_seed
from taskshare.results.metrics import average_accuracy, backward_transfer, forgetting

__all__ = ["CHECKPOINT", "TIMING_FIELDS", "run_method", "save_artifacts"]


def _refuse_data_parallel(cls, method: str) -> None:
    """Learners that cannot train exactly under data parallelism say why in ``not_data_parallel``."""
    if cls.not_data_parallel:
        raise ConfigError(f"--method {method} cannot run data-parallel ({cls.not_data_parallel}): run it in "
                          "one process (without torchrun)")


def _check_shards(learner, tasks, cfg: RunConfig, world: int) -> None:
    """Every global batch must leave each rank enough samples (a rank without a step would hang the others)."""
    need = 2 if learner.has_train_bn else 1  # patches skip a BN step on one sample
    sizes = [sum(len(t.train) for t in tasks)] if learner.offline else [len(t.train) for t in tasks]
    for n in sizes:
        smallest = min(n, cfg.batch_size) if n % cfg.batch_size == 0 else n % cfg.batch_size
        if n and smallest // world < need:
            raise ConfigError(f"a batch of {smallest} samples leaves fewer than {need} per process with {world} "
                              f"processes: change batch_size or limit so that every batch (also the last of an "
                              f"epoch, {n} samples in all) has at least {need * world}")


def _check_in_sync(learner, where: str) -> None:
    """Data parallel: the ranks' parameters must be equal (checksums); else an optimizer stepped unreduced."""
    ps = [t for t in learner.tensors() if isinstance(t, torch.nn.Parameter)]
    if not ps:
        return
    with torch.no_grad():
        sums = torch.stack([sum(p.double().sum() for p in ps), sum(p.double().pow(2).sum() for p in ps)])
    if not ddp.in_sync(sums.cpu()):
        raise TrainingError(f"{where}: the processes' parameters differ, so some optimizer of the learner stepped "
                            "without the data-parallel gradient reduction; run this method in one process "
                            "(without torchrun)")


@dataclass
class _Lifelong:
    """The state of one lifelong run while it trains: the stream, the learner and the accuracy rows."""

    run: Run
    cfg: RunConfig
    method: str
    learner: Any
    tasks: list
    reducer: Any
    rows: list = dataclasses.field(default_factory=list)
    saved_state: dict | None = None
    evaluated: dict = dataclasses.field(default_factory=dict)  # task index -> (prediction key, accuracy)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def restore(self) -> None:
        with restoring(self.run.checkpoint_path):
            self.learner.load_state_dict(self.saved_state)

    def checkpoint(self, task_index: int, epoch: int) -> None:
        self.run.save(lambda: {"learner": self.learner.state_dict(), "rows": self.rows, "task": task_index,
                               "epoch": epoch, "rng": torch.get_rng_state()})

    def evaluate_row(self, upto: int) -> list[float | None]:
        """Test accuracy of tasks 0..upto. A task whose `Learner.prediction_key` (a digest of every tensor its
        predictions read) is the one it had when last evaluated keeps that accuracy (the same bytes give the
        same outputs): with a frozen base and per-task tensors (patches, TAPS, experts, PAR) each task is
        evaluated once, not once per later task."""
        row: list[float | None] = [None] * len(self.tasks)
        with progress.bar(upto + 1, f"{self.method} test", unit="task", quiet=self.run.quiet) as bar:
            for j in range(upto + 1):
                key = self.learner.prediction_key(self.names[j])
                cached = self.evaluated.get(j)
                if key is not None and cached is not None and cached[0] == key:
                    row[j] = cached[1]
                else:
                    row[j] = evaluate(self.learner, self.tasks[j].test, self.names[j], self.cfg.eval_batch_size,
                                      self.learner.device)
                    self.evaluated[j] = (key, row[j])
                bar.update(1)
        return row

    def epochs(self, task_index: int, first_epoch: int, desc: str, train_one: Callable) -> None:
        """Epochs first_epoch.. of one task (or of all tasks, offline), checkpointing when due."""
        cfg = self.cfg
        where = (lambda e: f"{self.method}, epoch {e + 1}") if self.learner.offline else \
            (lambda e: f"{self.method}, task {self.tasks[task_index].name}, epoch {e + 1}")
        epoch = first_epoch
        guard = NonFiniteGuard(lambda: where(epoch), self.reducer)
        with progress.bar(train_one.batches * (cfg.epochs - first_epoch), desc, quiet=self.run.quiet) as bar:
            for epoch in range(first_epoch, cfg.epochs):
                gen = torch.Generator().manual_seed(task_seed(cfg.seed, task_index, salt=100 + epoch))
                self.learner.begin_epoch(epoch)
                train_one(gen, guard, bar)
                self.learner.end_epoch(epoch)
                self.run.log_epoch({"task": None if self.learner.offline else self.tasks[task_index].name,
                                    "epoch": epoch + 1, "train_loss": guard.epoch_mean()})
                if self.reducer is not None:
                    _check_in_sync(self.learner, where(epoch))
                if epoch + 1 < cfg.epochs and self.run.due():
                    self.checkpoint(0 if self.learner.offline else task_index, epoch + 1)

    def train_offline(self, next_epoch: int) -> None:
        learner, cfg = self.learner, self.cfg
        learner.begin_all(self.tasks)
        if self.saved_state is not None:
            self.restore()
        ddp.broadcast_tensors(learner.tensors())
        ddp.attach_all(learner, self.reducer)
        datasets = [t.train for t in self.tasks]

        def one(gen, guard, bar):
            train_mixed_epoch(learner, datasets, cfg.batch_size, gen, learner.device, guard, bar, self.reducer)
        one.batches = sum(-(-len(d) // cfg.batch_size) for d in datasets)
        self.epochs(0, next_epoch, f"{self.method} (all tasks)", one)
        T = len(self.tasks)
        self.rows = [[None] * T for _ in range(T - 1)] + [self.evaluate_row(T - 1)]

    def train_online(self, next_task: int, next_epoch: int) -> None:
        learner, cfg, T = self.learner, self.cfg, len(self.tasks)
        for i in range(next_task, T):
            task = self.tasks[i]
            first_epoch = next_epoch if i == next_task else 0
            ddp.broadcast_tensors(learner.tensors())  # ranks agree (before begin_task: LwF's teacher)
            learner.begin_task(task, i)
            if first_epoch > 0:  # mid-task resume: restore moments and method state after begin_task
                self.restore()
            ddp.attach_all(learner, self.reducer)  # the reducer on the new optimizers (re-checked every step)

            def one(gen, guard, bar, task=task):
                train_epoch(learner, task.train, cfg.batch_size, gen, learner.device, guard, bar, self.reducer)
            one.batches = -(-len(task.train) // cfg.batch_size)
            self.epochs(i, first_epoch, f"{self.method} {i + 1}/{T} {task.name}", one)
            learner.end_task(task)
            self.rows.append(self.evaluate_row(i))
            self.run.say(f"[{self.method}] task {i + 1}/{T} {task.name}: test accuracy on seen tasks "
                         + " ".join(f"{a:.3f}" for a in self.rows[-1] if a is not None))
            self.checkpoint(i + 1, 0)


def _check_file_names(names: list[str]) -> None:
    """Each task's artifact file name (`safe_name`) must be its own: two tasks must not overwrite each other."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(safe_name(name), name)
        if other != name:
            raise ConfigError(f"tasks {other!r} and {name!r} would write the same artifact file "
                              f"{safe_name(name)!r}: rename one of them (e.g. its folder)")


def _build_learner(cls, stream, tasks, cfg: RunConfig, options):
    torch.manual_seed(cfg.seed)
    learner_cfg = cfg  # model=auto on a stream that names its backbone (transfer benchmarks) means that one
    if cfg.model == "auto" and getattr(stream, "default_model", ""):
        learner_cfg = dataclasses.replace(cfg, model=stream.default_model)
    return cls(learner_cfg, options, tasks[0].input_shape)


def run_method(stream, method: str, cfg: RunConfig, out_dir: str | Path, *, benchmark: str | None = None,
               resume: bool = False, quiet: bool = True,
               on_checkpoint: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train `method` over `stream` and write OUT/<method>/results.json; returns the results dict.
    `stream` may be a function that builds it (then `benchmark` names it): a finished run kept by --resume
    then never loads the data."""
    if callable(stream) and benchmark is None:
        raise TypeError("run_method: pass benchmark= with a stream-building function")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose from {', '.join(METHODS)} (taskshare list)")
    cls, di = METHODS[method], ddp.info()
    if di.enabled:
        _refuse_data_parallel(cls, method)
    options = check_options(cls.Options, cfg.methods.get(method, {}), method)
    benchmark = benchmark or stream.name
    run = Run(Path(out_dir) / method, identity(benchmark, method, cfg), resume, quiet, cfg.checkpoint_minutes,
              on_checkpoint)
    done = run.finished(lambda r: identity(r["benchmark"], r["method"], r["config"]))
    if done is not None:
        return done
    stream = stream() if callable(stream) else stream
    tasks = [t.limit(cfg.limit, seed=cfg.seed) if cfg.limit else t for t in stream.tasks]
    if cfg.limit and cfg.limit < cfg.batch_size and not cls.offline:
        run.say(f"[{method}] warning: --limit {cfg.limit} is below the batch size {cfg.batch_size}: one "
                "optimizer step per task and epoch")
    _check_file_names([t.name for t in tasks])
    learner = _build_learner(cls, stream, tasks, cfg, options)
    run.need_space(state_bytes(learner.tensors()))
    reducer = ddp.GradReducer() if di.enabled else None
    if di.enabled:
        _check_shards(learner, tasks, cfg, di.world_size)
    state = _Lifelong(run, cfg, method, learner, tasks, reducer)
    next_task = next_epoch = 0
    ckpt = run.checkpoint(check_lifelong, n_tasks=len(tasks), epochs=cfg.epochs, offline=cls.offline)
    if ckpt is not None:
        state.saved_state, state.rows = ckpt["learner"], ckpt["rows"]
        next_task, next_epoch = ckpt["task"], ckpt["epoch"]
        state.restore()
        torch.set_rng_state(ckpt["rng"])
        ddp.attach_all(learner, reducer)
        run.say(f"[{method}] resuming at task {next_task + 1}/{len(tasks)}, epoch {next_epoch} from "
                f"{run.checkpoint_path}")
    if cls.offline:
        state.train_offline(next_epoch)
    else:
        state.train_online(next_task, next_epoch)
    # validation accuracy of every task at the end: what hyper-parameters may be chosen on (never test)
    val_acc = [evaluate(learner, t.val, t.name, cfg.eval_batch_size, learner.device) for t in tasks]
    return run.finish(lambda: _results(run, learner, benchmark, method, cfg, state.names, state.rows, val_acc,
                                       tasks),
                      lambda r: f"avg acc {r['avg_acc']:.4f}")


def save_artifacts(learner, names: list[str], art_dir: Path, tasks=()) -> tuple[dict[str, int], int]:
    """base.safetensors (shared tensors) + one artifact per task + manifest.json (`api.folder`: what
    `taskshare.load`, `predict` and `export` read); returns ({task: bytes}, base bytes)."""
    base = save_tensors(art_dir / "base.safetensors", learner.shared_tensors(),
                        {"base_fingerprint": learner.base_fingerprint()})
    sizes = {name: learner.save_artifact(name, art_dir / safe_name(name)) for name in names}
    done = [t for t in tasks if t.name in sizes]
    if done:
        learner.write_manifest(art_dir, done, _preprocessing(done[0]))
    return sizes, base


def _preprocessing(task) -> dict[str, Any]:
    """How the stream turns stored inputs into the network's (what `predict` repeats on new inputs)."""
    t = getattr(task.train, "transform", None)
    scale = getattr(t, "scale", None)
    return {"stored_dtype": str(task.train.x.dtype).removeprefix("torch."), "transform": repr(t) if t else None,
            "scale": scale}


def _results(run: Run, learner, benchmark, method, cfg, names, rows, val_acc, tasks=()) -> dict[str, Any]:
    sizes, _ = save_artifacts(learner, names, run.run_dir / "artifacts", tasks)
    base = learner.shared_parameter_count()
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
        **run.run_fields(),
        "config": cfg.to_dict(), "identity": run.identity, "versions": versions(),
        **learner.extra_results(),
    }
