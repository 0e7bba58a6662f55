"""`taskshare run --jobs N`: the units of a run (engine.parallel.plan_units) and the same results as a serial run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from taskshare.cli import main
from taskshare.engine.grid import combinations, setting_label
from taskshare.engine.parallel import Unit, _deferred_sigint, describe, plan_units


def test_without_a_grid_every_method_runs_on_every_seed_where_the_serial_run_writes_it():
    out = Path("o")
    assert plan_units(["a", "b"], [7], out) == [[Unit("a", 7, out), Unit("b", 7, out)]]
    (units,) = plan_units(["a", "b"], [0, 1], out)
    assert [(u.method, u.seed, u.where) for u in units] == [
        ("a", 0, out / "seed-0"), ("b", 0, out / "seed-0"), ("a", 1, out / "seed-1"), ("b", 1, out / "seed-1")]


def test_grid_units_are_the_folders_the_grid_selection_reads():
    out, grid = Path("o"), {"lr": ["0.1", "0.01"], "ewc.lambda": ["10", "100"]}
    (units,) = plan_units(["finetune", "ewc"], [0, 1], out, grid)
    assert len(units) == (2 + 4) * 2
    for method in ("finetune", "ewc"):
        for setting in combinations(grid, method):   # engine.grid writes OUT/grid/<method>/<label>/seed-S
            for seed in (0, 1):
                assert Unit(method, seed, out / "grid" / method / setting_label(setting) / f"seed-{seed}",
                            tuple(setting.items())) in units
    assert describe(units[-1]) == "ewc lr=0.01 ewc.lambda=100 seed 1"


def test_multi_output_grid_trains_each_seeds_reference_first():
    out = Path("o")
    first, second = plan_units(["stl", "ew"], [0, 1], out, {"lr": ["0.1", "0.01"]}, reference="stl")
    assert first == [Unit("stl", 0, out / "seed-0"), Unit("stl", 1, out / "seed-1")]
    assert len(second) == 4 and {u.method for u in second} == {"ew"}
    assert all(u.reference == out / f"seed-{u.seed}" for u in second)
    (only,) = plan_units(["ew"], [3], out, {"lr": ["0.1"]}, reference="stl")[1]
    assert only.reference == out and only.where == out / "grid" / "ew" / "lr_0.1" / "seed-3"


def _same_results(a: Path, b: Path, key: str) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("results.json"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("results.json"))
    for f in files:
        ra, rb = (json.loads((d / f).read_text()) for d in (a, b))
        assert ra[key] == rb[key] and ra.get("selection") == rb.get("selection"), f


def test_jobs_gives_the_serial_runs_results_and_choices(tmp_path, capsys):
    argv = ["run", "digits-tiny", "-m", "finetune,ewc", "--epochs", "1", "--limit", "40", "--seed", "0,1",
            "--set", "benchmark.n_tasks=2", "--grid", "lr=0.1,0.001", "--grid", "ewc.lambda=1,100"]
    assert main([*argv, "--quiet", "--out", str(tmp_path / "serial")]) == 0
    capsys.readouterr()
    assert main([*argv, "--jobs", "2", "--out", str(tmp_path / "jobs")]) == 0
    err = capsys.readouterr().err
    assert "12 trainings in 2 processes" in err and "ewc lr=0.001 ewc.lambda=100 seed 1: done" in err
    assert "already complete" not in err   # the serial pass only collects
    _same_results(tmp_path / "serial", tmp_path / "jobs", "acc_matrix")
    assert (tmp_path / "jobs" / "summary.json").exists()


def test_jobs_on_a_multi_output_grid_shares_the_serial_stl_reference(tmp_path):
    argv = ["run", "synthetic-imbalanced", "-m", "stl,ew", "--epochs", "1", "--limit", "200", "--quiet",
            "--set", "optimizer=adam", "--seed", "0,1", "--grid", "lr=0.01,0.001"]
    assert main([*argv, "--out", str(tmp_path / "serial")]) == 0
    assert main([*argv, "--jobs", "2", "--out", str(tmp_path / "jobs")]) == 0
    _same_results(tmp_path / "serial", tmp_path / "jobs", "task_metrics")
    res = json.loads((tmp_path / "jobs" / "seed-1" / "ew" / "results.json").read_text())
    stl = json.loads((tmp_path / "jobs" / "seed-1" / "stl" / "results.json").read_text())
    assert res["stl_baseline"]["task_metrics"] == stl["task_metrics"]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_jobs_must_be_a_count(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "digits-tiny", "--jobs", value, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "give the number of processes, 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()   # refused before anything is written


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")   # a re-parented zombie nobody reaps is gone too
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("late", [False, True], ids=["checked", "after-the-last-check"])
def test_ctrl_c_during_the_wait_is_raised_only_where_the_loop_checks(late):
    """Inside `_deferred_sigint` a SIGINT sets the event and raises nothing (a KeyboardInterrupt in the middle of
    concurrent.futures can leave a future's lock held, and the pool's shutdown then hangs); a Ctrl-C the loop did
    not check is raised on leaving the block, and the default handler is back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as raised:
            with _deferred_sigint() as stop:
                os.kill(os.getpid(), signal.SIGINT)
                deadline = time.monotonic() + 10
                while not stop.is_set() and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert stop.is_set()
                if not late:
                    raise KeyboardInterrupt("checked")
        assert str(raised.value) == ("checked" if not late else "")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["killed", "interrupted"])
def test_stopping_a_run_stops_its_workers(sig, tmp_path):
    """A run stopped by SIGTERM (the default action: no cleanup runs) or by Ctrl-C sent to it alone leaves no
    worker training into its folders."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys, time
        from pathlib import Path
        from taskshare.engine.parallel import Unit, run_units

        # as from a terminal: a process started with `&` by a non-interactive shell (a detached CI job) inherits
        # SIGINT ignored, and Python then leaves it ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def train(unit):
            Path(sys.argv[1], str(os.getpid())).touch()
            time.sleep(120)

        if __name__ == "__main__":
            run_units(train, [[Unit("a", 0, Path(".")), Unit("b", 0, Path("."))]], jobs=2)
    """))
    pids = tmp_path / "pids"
    pids.mkdir()
    run = subprocess.Popen([sys.executable, str(script), str(pids)])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers := [int(p.name) for p in pids.iterdir()]) < 2:
            assert time.monotonic() < deadline and run.poll() is None, "the workers did not start"
            time.sleep(0.1)
        run.send_signal(sig)
        assert run.wait(timeout=30) != 0
        deadline = time.monotonic() + 15
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), "a worker outlived its run"
    finally:   # an orphan left by a failure here would wait for work forever
        run.kill()
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)
