"""The runner: results.json contents, artifacts, checkpoints and resume, non-finite losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from taskshare.core.serialize import load_state
from taskshare.engine.lifelong import CHECKPOINT, run_method
from taskshare.engine.run import cpu_info
from taskshare.errors import ConfigError, TrainingError
from taskshare.methods import METHODS


REQUIRED = ["benchmark", "method", "seed", "tasks", "acc_matrix", "avg_acc", "bwt", "params", "artifact_bytes",
            "time_s", "peak_rss_mb", "config", "versions"]


def test_results_json_has_the_documented_fields(stream, cfg, tmp_path):
    res = run_method(stream, "finetune", cfg, tmp_path)
    on_disk = json.loads((tmp_path / "finetune" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    for key in REQUIRED:
        assert key in on_disk, key
    R = on_disk["acc_matrix"]
    assert R[0][1] is None and R[0][2] is None and all(0 <= v <= 1 for row in R for v in row if v is not None)
    assert on_disk["avg_acc"] == pytest.approx(sum(R[-1]) / 3)
    cpu = cpu_info()   # numbers are bit-identical on one CPU only, so every run records which
    assert on_disk["versions"]["cpu"] == f"{cpu['model']} ({cpu['capability']})"
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability() and cpu["vendor"] and cpu["model"]
    assert on_disk["bwt"] == pytest.approx(((R[2][0] - R[0][0]) + (R[2][1] - R[1][1])) / 2)
    p = on_disk["params"]
    assert p["added_per_task"] == [400 * 3 + 3] * 3 and p["total"] == p["base"] + sum(p["added_per_task"])
    art = tmp_path / "finetune" / "artifacts"
    for name in stream.task_names:
        assert on_disk["artifact_bytes"][name] == (art / f"{name}.safetensors").stat().st_size + \
            (art / f"{name}.json").stat().st_size
    assert not (tmp_path / "finetune" / CHECKPOINT).exists()


def test_joint_reports_only_the_final_row(stream, cfg, tmp_path):
    res = run_method(stream, "joint", cfg, tmp_path)
    assert res["acc_matrix"][:2] == [[None] * 3, [None] * 3]
    assert None not in res["acc_matrix"][2] and res["bwt"] is None and res["avg_acc"] > 0.7


class Interrupt(Exception):
    pass


def test_resume_with_other_settings_is_refused(stream, cfg, tmp_path):
    def crash(path):
        raise Interrupt

    with pytest.raises(Interrupt):
        run_method(stream, "finetune", cfg, tmp_path, on_checkpoint=crash)
    cfg.lr = 0.5
    with pytest.raises(ConfigError, match="was made with other settings"):
        run_method(stream, "finetune", cfg, tmp_path, resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(stream, cfg, tmp_path, monkeypatch):
    cls = METHODS["finetune"]
    original = cls.observe

    def observe(self, x, y):
        loss = original(self, x, y)
        return loss * float("nan") if self.current == "t1" else loss

    monkeypatch.setattr(cls, "observe", observe)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) in finetune, task t1.*lower the learning rate"):
        run_method(stream, "finetune", cfg, tmp_path)
    state, _ = load_state(tmp_path / "finetune" / CHECKPOINT)
    assert state["task"] == 1 and state["epoch"] == 0  # the checkpoint after task 0 is intact
    assert not (tmp_path / "finetune" / "results.json").exists()


def test_limit_caps_training_samples(stream, cfg, tmp_path):
    cfg.limit = 10
    cfg.epochs = 1
    seen = []
    cls = METHODS["finetune"]
    original = cls.observe
    cls_observe = lambda self, x, y: (seen.append(len(y)), original(self, x, y))[1]  # noqa: E731
    try:
        cls.observe = cls_observe
        run_method(stream, "finetune", cfg, tmp_path)
    finally:
        cls.observe = original
    assert sum(seen) == 30


@pytest.mark.slow
def test_killed_cli_run_resumes_to_identical_results(tmp_path):
    """A real process killed right after its first checkpoint, then `--resume`, through the CLI."""
    args = [sys.executable, "-m", "taskshare.cli", "run", "digits-tiny", "--method", "lwf", "--epochs", "2",
            "--limit", "60", "--quiet", "--set", "benchmark.n_tasks=2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    full = subprocess.run(args + ["--out", str(tmp_path / "a")], env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    killed = subprocess.run(args + ["--out", str(tmp_path / "b")], capture_output=True, text=True,
                            env={**env, "TASKSHARE_CRASH_AFTER_CHECKPOINT": "1"})
    assert killed.returncode == 137 and (tmp_path / "b" / "lwf" / CHECKPOINT).exists()
    resumed = subprocess.run(args + ["--out", str(tmp_path / "b"), "--resume"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "a" / "lwf" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "lwf" / "results.json").read_text())
    assert a["acc_matrix"] == b["acc_matrix"] and a["params"] == b["params"]


def test_bf16_autocast_trains_and_reports_float_accuracies(stream, cfg, tmp_path):
    cfg.precision = "bf16"
    res = run_method(stream, "lwf", cfg, tmp_path)
    assert res["config"]["precision"] == "bf16" and res["avg_acc"] > 0.6


def test_peak_memory_is_per_run_not_per_process():
    """results.json's peak_rss_mb is sampled during one method's run: a later method does not inherit an
    earlier method's peak (ru_maxrss would)."""
    import sys
    import time

    import torch

    from taskshare.engine.run import RSSSampler
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/statm is Linux only")
    first = RSSSampler(interval=0.01).start()
    big = torch.ones(40_000_000)  # 160 MB
    time.sleep(0.1)
    del big
    p1 = first.stop()
    second = RSSSampler(interval=0.01).start()
    time.sleep(0.05)
    p2 = second.stop()
    assert p1 - p2 > 100


def test_resume_keeps_finished_runs_without_loading_their_data(stream, cfg, tmp_path):
    """--resume over a finished run returns its results and never calls the stream builder (the collecting
    pass of `--jobs` and of a rerun script); an unfinished method builds it once."""
    first = run_method(stream, "finetune", cfg, tmp_path)
    calls = []

    def build():
        calls.append(1)
        return stream

    assert run_method(build, "finetune", cfg, tmp_path, benchmark=stream.name, resume=True) == first
    assert calls == []
    run_method(build, "lwf", cfg, tmp_path, benchmark=stream.name, resume=True)
    assert calls == [1]
    with pytest.raises(TypeError, match="pass benchmark="):
        run_method(build, "lwf", cfg, tmp_path)
