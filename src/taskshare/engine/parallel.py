"""`taskshare run ... --jobs N`: one run's independent trainings spread over N worker processes.

A **unit** is what a serial run trains in one call: one method on one seed (``OUT/seed-S/<method>``, or
``OUT/<method>`` for one seed), or one ``--grid`` setting of a method on one seed
(``OUT/grid/<method>/<setting>/seed-S/<method>``). `plan_units` lists them, pure and in the serial order;
`run_units` trains them in N spawned processes, each with its share of the torch threads. The workers train
every unit exactly as the serial run would (the same settings, folders and seeds), so the run then makes its usual serial
pass with resume: it finds every unit finished and only chooses on validation, tabulates and summarises.
Accuracy matrices equal a serial run's at the workers' thread count.

A unit that fails in a worker (a diverging --grid setting, a full disk) is left to the serial pass, which
continues it from its last checkpoint and records or reports the failure as a serial run does. On a
multi-output benchmark with --grid, each seed's STL reference (the Δm baseline of every setting) is trained in
a first phase, the settings in a second.

Stopping the run stops its workers: on Ctrl-C or any exception the run terminates them, and a worker whose
run was killed outright (SIGTERM, SIGKILL, a scheduler's time limit) exits within a second of noticing, so no
orphan goes on training into the run's folders. Checkpoints are written atomically: `--resume` continues.
Ctrl-C is taken at one point of the wait loop (`_deferred_sigint`): a KeyboardInterrupt raised anywhere else
could leave a future's lock held inside concurrent.futures, and the pool's shutdown would then wait forever.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from taskshare.engine.grid import candidate_dir, combinations
from taskshare.engine.outdir import seed_dir

__all__ = ["Unit", "describe", "plan_units", "run_units"]


@dataclass(frozen=True)
class Unit:
    """One training of a run: `method` on `seed` with the extra settings `setting` (a --grid combination),
    written to `where`/<method>; `reference`: the folder of the seed's reference run (multi-output --grid)."""
    method: str
    seed: int
    where: Path
    setting: tuple[tuple[str, str], ...] = ()
    reference: Path | None = None


def plan_units(methods: list[str], seeds: list[int], out: Path, grid: dict[str, list[str]] | None = None,
               reference: str | None = None) -> list[list[Unit]]:
    """The units of a run, as phases (the units of one phase are independent; phases run in order).

    Without a grid: every method on every seed, in ``OUT`` (one seed) or ``OUT/seed-S``. With one: every
    combination of the grid keys that apply to a method, on every seed, in the folders `engine.grid` reads.
    `reference` (multi-output --grid: ``"stl"``) is trained first on every seed at the run's own settings
    and is not part of the grid."""
    if not grid:
        return [[Unit(m, s, seed_dir(out, s, seeds)) for s in seeds for m in methods]]
    first = [Unit(reference, s, seed_dir(out, s, seeds)) for s in seeds] if reference else []
    units = [Unit(m, s, candidate_dir(out, m, c) / f"seed-{s}", tuple(c.items()),
                  seed_dir(out, s, seeds) if reference else None)
             for m in methods if m != reference for c in combinations(grid, m) for s in seeds]
    return [phase for phase in (first, units) if phase]


def _exit_with(parent: int) -> None:
    """Exit this worker once `parent` is gone (this process has been re-parented): checked every second."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _start_worker(threads: int, parent: int) -> None:
    import torch

    from taskshare import progress

    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    progress.set_quiet(True)


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[threading.Event]:
    """Within the block, Ctrl-C (SIGINT) sets the event instead of raising KeyboardInterrupt wherever the main
    thread happens to be: the caller raises it at a safe point, and one that came after the caller's last check
    is raised on leaving the block. A no-op event outside the main thread or under another SIGINT handler."""
    stop = threading.Event()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield stop
        return
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if stop.is_set():
        raise KeyboardInterrupt


def run_units(train: Callable[[Unit], object], phases: list[list[Unit]], jobs: int, quiet: bool = True) -> int:
    """Train every unit with `train` (picklable: a module-level function or a partial of one) in `jobs`
    spawned processes, phases one after another; each process gets an equal share of this one's torch threads.
    Returns how many units failed (their errors are the serial pass's to report)."""
    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    if not quiet:
        print(f"{sum(map(len, phases))} trainings in {jobs} processes of {threads} torch thread(s) each",
              file=sys.stderr)
    failed = 0
    context = multiprocessing.get_context("spawn")   # no fork of a process that holds torch threads
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                             initargs=(threads, os.getpid())) as pool, _deferred_sigint() as stop:
        try:
            for units in phases:
                futures = {pool.submit(train, u): u for u in units}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    if stop.is_set():
                        raise KeyboardInterrupt
                    for future in done:
                        error = future.exception()
                        failed += error is not None
                        if not quiet:
                            print(f"  {describe(futures[future])}: "
                                  f"{'done' if error is None else 'failed (reported below)'}", file=sys.stderr)
        except BaseException:   # Ctrl-C or a failure here: stop the workers now, not after their units
            for worker in multiprocessing.active_children():
                worker.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return failed


def describe(unit: Unit) -> str:
    """'ewc lr=0.01 seed 1': what a unit trains."""
    return " ".join([unit.method, *(f"{k}={v}" for k, v in unit.setting), f"seed {unit.seed}"])
