"""What every run has, whatever it trains: the one run engine under both drivers.

A `Run` is one method's folder ``OUT/<method>/`` and its life cycle, shared by the lifelong driver
(`engine.lifelong`) and the multi-output driver (`engine.multioutput`):

- **identity**: the benchmark, the method and every setting that changes results (`identity`); a resumed
  run must have the same;
- **resume**: `finished()` returns a finished run's results when resumed with the same settings (and
  refuses other settings), `checkpoint()` the validated checkpoint of an unfinished one;
- **checkpoints**: `save(state)` writes atomically (rank 0 under torchrun; the others wait), `due()` says
  when `checkpoint_minutes` have passed (rank 0's clock decides for all);
- **results**: `finish(results)` adds the run fields (`time_s`, `peak_rss_mb`, `world_size`, `versions`),
  writes results.json, removes the checkpoint; other ranks read rank 0's file;
- **progress**: `say(msg)`, one line on stderr unless quiet (rank 0 only).

Timing and memory fields (`TIMING_FIELDS`) are the only results.json values that may differ between two
runs with the same seed and settings.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskshare import __version__, progress
from taskshare.config import RunConfig
from taskshare.core.serialize import atomic_write_json, load_state, read_json, save_state
from taskshare.engine import distributed as ddp
from taskshare.engine.outdir import MIN_FREE_BYTES, prepare_out
from taskshare.errors import ArtifactError, ConfigError

CHECKPOINT = "checkpoint.safetensors"
# results.json keys (at any depth) that measure the machine, not the method: the only values that may differ
# between two runs with the same seed and settings (tests/test_reproducible_outputs.py)
TIMING_FIELDS = ("time_s", "peak_rss_mb", "timing")
# settings that do not change results: a run may be resumed with other values
NOT_IDENTITY = ("device", "checkpoint_minutes", "eval_batch_size")


def identity(benchmark: str, method: str, cfg: RunConfig | dict[str, Any],
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What makes two runs the same run: benchmark, method, every setting that changes results and the
    method's options (as given, or all of them with defaults when `options` is passed)."""
    config = cfg.to_dict() if isinstance(cfg, RunConfig) else cfg
    conf = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    conf["methods"] = {method: (config.get("methods") or {}).get(method, {}) if options is None else options}
    return {"benchmark": benchmark, "method": method, "config": conf}


def cpu_info() -> dict[str, str]:
    """The CPU's vendor, model and the kernels' capability: numbers are bit-identical from run to run on one
    CPU, not across CPUs (another vendor's or instruction set's kernels round differently)."""
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return {"vendor": found.get("vendor_id") or platform.machine() or "unknown",
            "model": found.get("model name") or platform.processor() or "unknown",
            "capability": torch.backends.cpu.get_cpu_capability()}


def versions() -> dict[str, str]:
    cpu = cpu_info()
    return {"taskshare": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "cpu": f"{cpu['model']} ({cpu['capability']})"}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RSSSampler:
    """The peak resident memory of one method's run, not of the process so far: a daemon thread reads
    /proc/self/statm every `interval` s between `start` and `stop` (elsewhere: the process peak)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._thread: threading.Thread | None = None

    def _now(self) -> float | None:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * self._page / 2**20
        except (OSError, ValueError, IndexError):
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._now() or 0.0)

    def start(self) -> RSSSampler:
        if self._now() is not None:
            self.peak = self._now()
            self._thread = threading.Thread(target=self._loop, daemon=True, name="taskshare-rss")
            self._thread.start()
        return self

    def stop(self) -> float:
        """The peak in MB since `start` (the process peak where /proc is not available)."""
        if self._thread is None:
            return peak_rss_mb()
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now() or 0.0)
        return self.peak


def state_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


EPOCH_LOG = "epochs.jsonl"  # one JSON object per trained epoch: task, epoch, train_loss (+ validation), time_s


def _scalars(record: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """The numeric leaves of a log record as (slash/joined/key, value)."""
    out = []
    for k, v in record.items():
        if isinstance(v, dict):
            out += _scalars(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch",):
            out.append((f"{prefix}{k}", float(v)))
    return out


@dataclass
class Run:
    """One method's run folder and life cycle (see the module docstring)."""

    run_dir: Path
    identity: dict[str, Any]
    resume: bool = False
    quiet: bool = True
    checkpoint_minutes: float = 5.0
    on_checkpoint: Callable[..., None] | None = None
    _start: float = field(default_factory=time.perf_counter)
    _last_checkpoint: float = field(default_factory=time.monotonic)
    _logged: int = 0           # epochs logged by this process (the TensorBoard step)
    _tb: Any = None            # the TensorBoard writer, when the package is installed
    _rss: RSSSampler = field(default_factory=lambda: RSSSampler().start())  # this method's peak memory

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.quiet = self.quiet or not ddp.info().is_main

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def results_path(self) -> Path:
        return self.run_dir / "results.json"

    def say(self, msg: str) -> None:
        """`progress.say` on rank 0 of a run that is not quiet."""
        if not self.quiet:
            progress.say(msg)

    # -------------------------------------------------------------------------------------------- resume
    def finished(self, derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """With --resume and a finished run here: its results if made with the same settings (else a one-line
        refusal). None when there is nothing finished to keep. `derive(results)` rebuilds the identity of
        results written without one."""
        if not (self.resume and self.results_path.exists() and not self.checkpoint_path.exists()):
            return None
        done = read_json(self.results_path, "results")
        try:
            theirs = done["identity"] if "identity" in done or derive is None else derive(done)
        except (KeyError, TypeError, AttributeError):
            raise ArtifactError(f"{self.results_path} is not a taskshare results file (benchmark, method or config "
                                "missing): delete it or run without --resume to start over") from None
        if theirs != self.identity:
            raise ConfigError(f"{self.run_dir} holds a finished run made with other settings: resume with the same "
                              "benchmark, method and options, or run without --resume to start over")
        self.say(f"[{self.identity['method']}] already complete in {self.run_dir}: keeping its results")
        return done

    def checkpoint(self, check: Callable[..., dict[str, Any]], **limits) -> dict[str, Any] | None:
        """With --resume: the checkpoint here, validated by `check(ckpt, path, identity, **limits)`; else None.
        Restarts the run clock at the checkpoint's elapsed time."""
        if not (self.resume and self.checkpoint_path.exists()):
            return None
        ckpt = check(load_state(self.checkpoint_path)[0], self.checkpoint_path, self.identity, **limits)
        self._start = time.perf_counter() - ckpt["elapsed"]
        return ckpt

    # ---------------------------------------------------------------------------------------- checkpoints
    def log_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's metrics to RUN/epochs.jsonl (rank 0), with the elapsed time; and to TensorBoard
        event files in RUN/tensorboard/ when the `tensorboard` package is installed."""
        if not ddp.info().is_main:
            return
        record = {**record, "time_s": round(self.elapsed(), 3)}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / EPOCH_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        self._logged += 1
        writer = self._tensorboard()
        if writer is not None:
            for key, value in _scalars(record):
                writer.add_scalar(key, value, self._logged)
            writer.flush()

    def _tensorboard(self):
        if self._tb is None and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb

    def need_space(self, nbytes: int) -> None:
        """Room for a checkpoint of `nbytes` of tensors (plus moments; twice while the rename is atomic)."""
        if ddp.info().is_main:
            prepare_out(self.run_dir, "--out", need_bytes=max(MIN_FREE_BYTES, 4 * nbytes))

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def due(self) -> bool:
        return ddp.agree(time.monotonic() - self._last_checkpoint >= self.checkpoint_minutes * 60)

    def save(self, state: Callable[[], dict[str, Any]], *callback_args) -> None:
        """Write the checkpoint `state()` (with identity and elapsed time added) on rank 0; all ranks wait."""
        if ddp.info().is_main:
            save_state(self.checkpoint_path, {"identity": self.identity, **state(), "elapsed": self.elapsed()})
        ddp.barrier()
        self._last_checkpoint = time.monotonic()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.checkpoint_path, *callback_args)
        if os.environ.get("TASKSHARE_CRASH_AFTER_CHECKPOINT"):  # used by the kill-and-resume test
            os._exit(137)

    # -------------------------------------------------------------------------------------------- results
    def run_fields(self) -> dict[str, Any]:
        return {"time_s": round(self.elapsed(), 3), "peak_rss_mb": round(self._rss.stop(), 1),
                "world_size": ddp.info().world_size}

    def finish(self, results: Callable[[], dict[str, Any]], summary: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
        """Rank 0 writes results.json from `results()` and drops the checkpoint; every rank returns it."""
        out = None
        if ddp.info().is_main:
            out = results()
            atomic_write_json(self.results_path, out)
            if self.checkpoint_path.exists():
                self.checkpoint_path.unlink()
        ddp.barrier()
        if out is None:
            out = read_json(self.results_path, "results")
        self.say(f"[{self.identity['method']}] {summary(out)}, wrote {self.results_path}")
        return out
