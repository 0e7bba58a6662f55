"""The multi-output driver: a multi-output benchmark through one method, with Δm against explicit STL
baselines (on the one run engine, `engine.run`).

``run_multitask(benchmark, method, cfg, out_dir)`` trains ``method`` (a ``MultiTaskTrainer`` method, or
``stl``) on a ``MULTITASK_BENCHMARKS`` dataset and writes ``OUT/<method>/``:

- ``results.json``: the lifelong keys that make sense for one multi-output model (benchmark, method, seed,
  tasks, params {base, added_per_task, total}, artifact_bytes, time_s, peak_rss_mb, config, versions;
  ``acc_matrix`` / ``avg_acc`` only when every task reports an accuracy: one final row of test
  accuracies, the rows before it null as for the joint learner; otherwise null, and bwt / fwt / forgetting
  are always null) plus ``task_metrics`` {task: {metric: value}} (test, at the selected epoch),
  ``val_metrics``, ``higher_is_better``, ``best_epoch``, ``history`` (per epoch: training losses,
  validation metrics, validation Δm, loss weights), ``stl_baseline`` (where the single-task numbers come
  from: path relative to this folder, config, their test and validation metrics) and ``delta_m`` / ``val_delta_m`` (percent,
  ``taskshare.results.metrics.delta_m``: positive = better than single-task);
- ``artifacts/base.safetensors`` (the shared encoder, its ``base_fingerprint`` in the header) and one task
  artifact per task (``<task>.safetensors`` + ``.json``, the checked format of ``core.artifacts``: its head,
  on that base fingerprint); for ``stl`` each task's whole network on an empty base;
- ``au.png`` and an ``au`` entry in results.json when ``<method>.record_au=true``: each task's share of
  the average squared update (rAU, AdaTask paper Eqs. 4-6) per shared layer, and ``OUT/au_compare.png``
  with every run in OUT that recorded it (e.g. ew under Adam next to adatask);
- ``checkpoint.safetensors`` at an epoch end when ``checkpoint_minutes`` have passed (atomic, pickle-free): ``resume=True``
  continues to exactly the results of an uninterrupted run.

Single-task baselines. ``stl`` trains one network per task (the same encoder architecture and
initialisation plus that task's head) with the same code, optimizer, learning rate, epochs, batches and
seed, each selecting its own best epoch on its own validation metric. Any other method first makes sure
``OUT/stl/results.json`` exists for the same benchmark, seed and configuration (it is trained then and
reused afterwards) and reports Δm of its test metrics against it. Never an epoch-0 baseline.

Model selection uses validation only: the epoch with the best validation Δm against the STL validation
metrics (STL: each task's primary validation metric); the test metrics reported are those of that epoch.

Data parallelism: under ``torchrun --nproc_per_node=N`` every rank draws the same global batch and trains
on its shard; per-task gradients are reduced before they are combined (``engine.distributed``). Rank 0
writes every file.

    taskshare run adult --method ew,adatask --epochs 10 --set optimizer=adam \\
        --set lr=0.001 --out runs/mt/adult [--set adatask.variant=rmsprop] [--set adatask.record_au=true]
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from taskshare import progress
from taskshare.core.checkpoint import check_multi_output, restoring
from taskshare.core.artifacts import content_sha256, write_artifact
from taskshare.core.paths import safe_name
from taskshare.core.serialize import read_json, save_tensors
from taskshare.engine.run import CHECKPOINT, Run, identity, state_bytes, versions
from taskshare.methods.base import task_seed
from taskshare.engine import distributed as ddp
from taskshare.config import RunConfig
from taskshare.errors import ConfigError, TrainingError
from taskshare.methods.multioutput.au import AURecorder, plot_au
from taskshare.data.multioutput import (
    MULTITASK_BENCHMARKS, MultiTaskData, Split, TaskSpec, benchmark_options, build_multitask, compute_metrics,
)
from taskshare.methods.multioutput.networks import SingleTaskNets, build_model
from taskshare.methods.multioutput.options import MULTITASK_METHODS, method_options
from taskshare.methods.multioutput.stl import STLStepper, loss_fn
from taskshare.methods.multioutput.trainer import METHOD_OPTIONS, REGISTRY, MultiTaskTrainer
from taskshare.results.metrics import delta_m

__all__ = [
    "MULTITASK_METHODS", "evaluate", "method_options", "multitask_table",
    "run_multitask",
]

# ------------------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def evaluate(model: nn.Module, split: Split, specs: tuple[TaskSpec, ...], batch_size: int = 1024,
             device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of ``model`` on ``split`` (batched forward, vectorised metrics)."""
    was = model.training
    model.eval()
    outs: dict[str, list[Tensor]] = {s.name: [] for s in specs}
    for s in range(0, len(split), batch_size):
        o = model(split.x[s:s + batch_size].to(device))
        for t in outs:
            outs[t].append(o[t].float().cpu())
    model.train(was)
    return {sp.name: compute_metrics(sp, torch.cat(outs[sp.name]), split.y[sp.name]) for sp in specs}


def _signed_primary(metrics: Mapping[str, float], spec: TaskSpec) -> float:
    v = metrics[spec.primary]
    return v if spec.higher_is_better[spec.primary] else -v


# ------------------------------------------------------------------------------------------ helpers

def _identity(benchmark: str, method: str, cfg: RunConfig, opts: dict[str, Any]) -> dict[str, Any]:
    """The run identity (engine.run.identity) with every benchmark option, defaults included."""
    ident = identity(benchmark, method, cfg, opts)
    ident["config"]["benchmark"] = dataclasses.asdict(benchmark_options(benchmark, cfg.benchmark))
    return json.loads(json.dumps(ident))


_DATA_CACHE: dict[str, MultiTaskData] = {}


def _data(benchmark: str, cfg: RunConfig, say) -> MultiTaskData:
    key = json.dumps([benchmark, cfg.seed, cfg.limit, dataclasses.asdict(benchmark_options(benchmark, cfg.benchmark))])
    if key not in _DATA_CACHE:
        di = ddp.info()
        if di.enabled and not di.is_main:
            ddp.barrier()                    # rank 0 builds first (fills caches such as the text embeddings)
        data = build_multitask(benchmark, cfg.seed, cfg.benchmark, say=say).limit(cfg.limit, cfg.seed)
        if di.enabled and di.is_main:
            ddp.barrier()
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = data
    return _DATA_CACHE[key]


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _clone_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _au_kind(method: str, cfg: RunConfig) -> str:
    return "adatask" if method in REGISTRY and REGISTRY[method].family == "adatask" else cfg.optimizer


# ------------------------------------------------------------------------------------------ the run

def run_multitask(benchmark: str, method: str, cfg: RunConfig, out_dir: str | Path, *, resume: bool = False,
                  quiet: bool = True, on_checkpoint: Callable[[Path, int], None] | None = None,
                  stl: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``method`` on multi-task ``benchmark`` and write OUT/<method>/results.json; returns the results.

    For a method other than ``stl`` the STL baselines OUT/stl/ are trained first unless present for the
    same benchmark, seed and settings, or given as `stl` (the results of an STL run: the Δm reference every
    setting of a --grid shares). ``on_checkpoint(path, epoch)`` is called after each checkpoint.
    """
    if benchmark not in MULTITASK_BENCHMARKS:
        raise ConfigError(f"unknown multi-task benchmark {benchmark!r}; choose from {', '.join(MULTITASK_BENCHMARKS)}")
    opts = method_options(method, cfg)
    if cfg.precision != "fp32":
        raise ConfigError(f"precision={cfg.precision} is not supported for multi-task runs; use precision=fp32")
    out_dir = Path(out_dir)
    run = Run(out_dir / method, _identity(benchmark, method, cfg, opts), resume, quiet, cfg.checkpoint_minutes,
              on_checkpoint)
    done = run.finished()
    if done is not None:
        return done
    data = _data(benchmark, cfg, run.say)
    if method == "stl":
        stl = None
    elif stl is None:
        stl = ensure_stl(benchmark, cfg, out_dir, resume=resume, quiet=quiet)
    return _MultiOutput(run, benchmark, method, cfg, opts, data, stl).train()


def ensure_stl(benchmark: str, cfg: RunConfig, out_dir: str | Path, *, resume: bool = False,
               quiet: bool = True) -> dict[str, Any]:
    """OUT/stl/results.json for this benchmark, seed and configuration: reused when present, else trained."""
    path = Path(out_dir) / "stl" / "results.json"
    identity = _identity(benchmark, "stl", cfg, method_options("stl", cfg))
    if path.exists() and not (path.parent / CHECKPOINT).exists():
        prev = read_json(path, "STL results")
        if isinstance(prev, dict) and prev.get("identity") == identity:
            return prev
    if not quiet and ddp.is_main():
        print(f"[stl] training the single-task baselines for {benchmark} (needed for delta_m)", file=sys.stderr)
    return run_multitask(benchmark, "stl", cfg, out_dir, resume=resume, quiet=quiet)


class _MultiOutput:
    """One multi-output run while it trains: model, stepper, per-unit best epochs, history, AU recorder."""

    def __init__(self, run: Run, benchmark: str, method: str, cfg: RunConfig, opts: dict[str, Any],
                 data: MultiTaskData, stl: dict[str, Any] | None):
        self.run, self.benchmark, self.method, self.cfg, self.opts, self.data, self.stl = \
            run, benchmark, method, cfg, opts, data, stl
        self.names, self.specs = data.task_names, data.tasks
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda: no CUDA device is available here; use device=cpu")
        self.reducer = ddp.GradReducer() if ddp.info().enabled else None
        self.model, self.stepper, self.units = self._build()
        self.best: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.recorder: AURecorder | None = None
        run.need_space(state_bytes(self.model.state_dict().values()))

    def _build(self):
        cfg, opts, specs, names, method = self.cfg, self.opts, self.specs, self.names, self.method
        base_kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, seed=cfg.seed,
                       reducer=self.reducer)
        if method == "stl":
            model = SingleTaskNets({t: build_model(self.data, cfg.seed, cfg.model, (t,)) for t in names})
            model = model.to(self.device)
            return model, STLStepper(model, specs, optimizer=cfg.optimizer, **base_kw), \
                {t: ((t,), model.nets[t]) for t in names}
        model = build_model(self.data, cfg.seed, cfg.model).to(self.device)
        options = {k: v for k, v in opts.items() if k in METHOD_OPTIONS[method]}
        if method == "uw":
            options["kinds"] = opts["kinds"] or ["classification" if s.kind == "ce" else "regression" for s in specs]
        optimizer = opts.get("variant", cfg.optimizer)  # AdaTask methods name their variant
        stepper = MultiTaskTrainer(model, {s.name: loss_fn(s) for s in specs}, method, optimizer=optimizer,
                                   options=options, grad_mode=opts["grad_mode"], **base_kw)
        return model, stepper, {"all": (names, model)}

    def score(self, unit: str, val: dict) -> float:
        if self.method == "stl":
            return _signed_primary(val[unit], next(s for s in self.specs if s.name == unit))
        return delta_m(val, self.stl["val_metrics"], self.data.higher_is_better())

    def batch(self, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        train = self.data.train
        return train.x[idx].to(self.device), {t: v[idx].to(self.device) for t, v in train.y.items()}

    def prepare(self, ckpt: dict[str, Any] | None) -> None:
        """Build the optimizer (and the sharing) on the first batch, then restore the checkpoint, if any."""
        first = ddp.shard(torch.arange(min(self.cfg.batch_size, len(self.data.train))), ddp.info())
        self.stepper.prepare(*self.batch(first))
        if self.opts.get("record_au"):
            shared = [(nm, p) for nm, p in self.model.named_parameters() if nm in set(self.stepper.sharing.shared)]
            if not shared:
                raise ConfigError(f"{self.method}.record_au: the model has no shared parameters to record")
            self.recorder = AURecorder.for_params(shared, len(self.names), _au_kind(self.method, self.cfg),
                                                  lr=self.cfg.lr, gamma=self.opts["au_gamma"])
            self.stepper.recorder = self.recorder
        if ckpt is not None:
            with restoring(self.run.checkpoint_path):
                self.stepper.load_state_dict(ckpt["stepper"])
                if self.recorder is not None and ckpt.get("au") is not None:
                    self.recorder.load_state_dict(ckpt["au"])
            torch.set_rng_state(ckpt["rng"])

    def epoch(self, epoch: int) -> None:
        """One shuffled pass (this rank's shards of the global batches), then validation and selection."""
        names, n, B, di = self.names, len(self.data.train), self.cfg.batch_size, ddp.info()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(task_seed(self.cfg.seed, 0,
                                                                                   salt=100 + epoch)))
        sums, steps = torch.zeros(len(names), dtype=torch.float64), 0
        with progress.bar(-(-n // B), f"{self.method} epoch {epoch + 1}/{self.cfg.epochs}", quiet=self.run.quiet) as bar:
            for s in range(0, n, B):
                glob = perm[s:s + B]
                idx = ddp.shard(glob, di)
                if self.reducer is not None:
                    self.reducer.set_shard(len(idx), len(glob))
                losses = self.stepper.step(*self.batch(idx))
                lv = torch.tensor([losses[t] for t in names], dtype=torch.float64)
                if not torch.isfinite(lv).all():
                    bad = names[int((~torch.isfinite(lv)).nonzero()[0])]
                    raise TrainingError(f"{self.method}: the loss of task {bad!r} became non-finite in epoch "
                                        f"{epoch + 1}; lower the learning rate (--set lr=...)")
                sums += lv
                steps += 1
                bar.update(1)
        self.stepper.end_epoch()
        self.select(epoch, sums / max(steps, 1))

    def select(self, epoch: int, mean_losses: Tensor) -> None:
        val = evaluate(self.model, self.data.val, self.specs, self.cfg.eval_batch_size, self.device)
        for unit, (tasks, module) in self.units.items():
            sc = self.score(unit, val)
            if unit not in self.best or sc > self.best[unit]["score"]:
                self.best[unit] = {"epoch": epoch + 1, "score": sc, "state": _clone_state(module),
                                   "val": {t: val[t] for t in tasks}}
        entry = {"epoch": epoch + 1, "train_loss": dict(zip(self.names, mean_losses.tolist())),
                 "val_metrics": val, "time_s": round(self.run.elapsed(), 3)}
        if self.method != "stl":
            entry["val_delta_m"] = self.score("all", val)
        if getattr(self.stepper, "last_weights", None) is not None:
            entry["loss_weights"] = dict(zip(self.names, self.stepper.last_weights))
        self.history.append(entry)
        self.run.log_epoch(entry)
        self.run.say(f"[{self.method}] epoch {epoch + 1}/{self.cfg.epochs}: train loss "
                     + " ".join(f"{t}={v:.4g}" for t, v in entry["train_loss"].items())
                     + (f", val delta_m {entry['val_delta_m']:+.2f}%" if "val_delta_m" in entry else "")
                     + f" ({entry['time_s']:.1f}s)")

    def state(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "model": self.model.state_dict(), "stepper": self.stepper.state_dict(),
                "best": self.best, "history": self.history, "rng": torch.get_rng_state(),
                "au": self.recorder.state_dict() if self.recorder is not None else None}

    def train(self) -> dict[str, Any]:
        run, cfg = self.run, self.cfg
        ckpt = run.checkpoint(check_multi_output, epochs=cfg.epochs)
        start_epoch = 0
        if ckpt is not None:
            with restoring(run.checkpoint_path):
                self.model.load_state_dict(ckpt["model"])
            start_epoch, self.history, self.best = ckpt["epoch"], ckpt["history"], ckpt["best"]
            run.say(f"[{self.method}] resuming at epoch {start_epoch}/{cfg.epochs} from {run.checkpoint_path}")
        self.prepare(ckpt)
        self.model.train()
        for epoch in range(start_epoch, cfg.epochs):
            self.epoch(epoch)
            if epoch + 1 < cfg.epochs and run.due():  # as the lifelong driver: every checkpoint_minutes
                run.save(lambda: self.state(epoch + 1), epoch + 1)
        for unit, (_, module) in self.units.items():  # the selected epoch(s): validation only
            module.load_state_dict(self.best[unit]["state"])
        test = evaluate(self.model, self.data.test, self.specs, cfg.eval_batch_size, self.device)
        val_metrics = {t: v for unit in self.units for t, v in self.best[unit]["val"].items()}
        results = run.finish(lambda: _results(self, test, val_metrics), _summary)
        if ddp.info().is_main and self.recorder is not None:
            _au_compare(run.run_dir.parent)
        return results


def _summary(r: dict[str, Any]) -> str:
    dm = r.get("delta_m")
    return ("test " + "; ".join(f"{t}: " + ", ".join(f"{m}={v:.4f}" for m, v in ms.items())
                                for t, ms in r["task_metrics"].items())
            + (f"; delta_m {dm:+.2f}%" if dm is not None else ""))


def _results(r: _MultiOutput, test, val_metrics) -> dict[str, Any]:
    """results.json, writing the artifacts and the AU plot (rank 0 only: `Run.finish` calls it there)."""
    benchmark, method, cfg, opts, data, model, best, history, stl, recorder, run_dir = (
        r.benchmark, r.method, r.cfg, r.opts, r.data, r.model, r.best, r.history, r.stl, r.recorder, r.run.run_dir)
    names = list(data.task_names)
    hib = data.higher_is_better()
    art = run_dir / "artifacts"
    sizes: dict[str, int] = {}
    if method == "stl":  # each task's whole network stands alone (an empty base)
        base, added = 0, [_numel(model.nets[t]) for t in names]
        fp, parts = content_sha256({}), {t: model.nets[t] for t in names}
    else:
        base, added = _numel(model.encoder), [_numel(model.heads[t]) for t in names]
        enc = model.encoder.state_dict()
        fp, parts = content_sha256(enc), {t: model.heads[t] for t in names}
        save_tensors(art / "base.safetensors", enc, {"base_fingerprint": fp, "kind": "shared encoder"})
    for t, module in parts.items():
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        sizes[t] = write_artifact(art / safe_name(t), t, tensors, {n for n, _ in module.named_parameters()}, fp,
                                  meta={"method": method, "benchmark": benchmark})
    accs = [test[t].get("acc") for t in names]
    if all(a is not None for a in accs):
        acc_matrix = [[None] * len(names) for _ in range(len(names) - 1)] + [accs]
        avg_acc = sum(accs) / len(accs)
    else:
        acc_matrix, avg_acc = None, None
    res: dict[str, Any] = {
        "benchmark": benchmark, "method": method, "seed": cfg.seed, "tasks": names,
        "acc_matrix": acc_matrix, "avg_acc": avg_acc, "bwt": None, "fwt": None, "forgetting": None,
        "task_metrics": test, "val_metrics": val_metrics, "higher_is_better": hib,
        "primary_metric": {s.name: s.primary for s in data.tasks},
        "best_epoch": ({t: best[t]["epoch"] for t in names} if method == "stl" else best["all"]["epoch"]),
        "stl_baseline": None, "delta_m": None, "val_delta_m": None,
        "params": {"base": base, "added_per_task": added, "total": base + sum(added)},
        "artifact_bytes": sizes,
        **r.run.run_fields(),
        "optimizer": f"adatask-{opts['variant']}" if "variant" in opts else cfg.optimizer,
        "method_options": opts,
        "data": {"train": len(data.train), "val": len(data.val), "test": len(data.test), **data.source},
        "history": history,
        "config": cfg.to_dict(), "identity": r.run.identity, "versions": versions(),
    }
    if stl is not None:
        res["stl_baseline"] = {"path": "../stl/results.json", "method": "stl",  # relative to this folder
                               "config": stl["config"], "best_epoch": stl["best_epoch"],
                               "task_metrics": stl["task_metrics"], "val_metrics": stl["val_metrics"]}
        res["delta_m"] = delta_m(test, stl["task_metrics"], hib)
        res["val_delta_m"] = delta_m(val_metrics, stl["val_metrics"], hib)
    if recorder is not None:
        res["au"] = {"kind": recorder.kind, "gamma": recorder.gamma, "steps": recorder.t, "stat": "mean",
                     "shares": recorder.shares("mean"), "lr_shares": recorder.lr_shares("mean")}
        plot_au({method: res["au"]["shares"]}, run_dir / "au.png", tasks=names,
                title=f"{benchmark}: rAU per shared layer")
    return res


def _au_compare(out_dir: Path) -> Path | None:
    """OUT/au_compare.png: one panel per run in OUT that recorded AU (e.g. ew under Adam vs adatask)."""
    panels, tasks = {}, None
    for f in sorted(out_dir.glob("*/results.json")):
        try:
            r = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(r.get("au"), dict) and r["au"].get("shares"):
            panels[f"{r['method']} ({r.get('optimizer', '?')})"] = r["au"]["shares"]
            tasks = r["tasks"]
    if not panels:
        return None
    return plot_au(panels, out_dir / "au_compare.png", tasks=tasks, title="rAU per shared layer")


# ------------------------------------------------------------------------------------------ table

def multitask_table(results: list[dict], markdown: bool = False) -> str:
    """One row per run: each task's test metrics, Δm vs STL (%), validation Δm, selected epoch, time (s).
    Plain aligned text, or a Markdown table with ``markdown=True``."""
    if not results:
        return ""
    tasks = results[0]["tasks"]
    hib = results[0].get("higher_is_better", {})
    cols = [(t, m) for t in tasks for m in results[0]["task_metrics"][t]]
    arrow = lambda t, m: "" if t not in hib else (" ↑" if hib[t][m] else " ↓")  # noqa: E731
    header = ["method"] + [f"{t} {m}{arrow(t, m)}" for t, m in cols] + ["Δm (%)", "val Δm (%)", "epoch",
                                                                        "time (s)"]
    rows = []
    for r in results:
        dm, vdm = r.get("delta_m"), r.get("val_delta_m")
        ep = r.get("best_epoch")
        ep = ",".join(str(v) for v in ep.values()) if isinstance(ep, dict) else str(ep)
        rows.append([r["method"]] + [f"{r['task_metrics'][t][m]:.4f}" for t, m in cols]
                    + ["-" if dm is None else f"{dm:+.2f}", "-" if vdm is None else f"{vdm:+.2f}", ep,
                       f"{r['time_s']:.1f}"])
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(r) + " |" for r in rows])
    w = [max(len(c) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    return "\n".join([line(header), line(["-" * x for x in w])] + [line(r) for r in rows])


# ------------------------------------------------------------------------------------------ CLI
