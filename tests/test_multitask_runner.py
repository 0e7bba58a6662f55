"""The multi-task runner: results.json fields, Δm against the STL run, resume == uninterrupted, options."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from taskshare.core.serialize import atomic_write_json, load_tensors
from taskshare.config import RunConfig
from taskshare.errors import ConfigError
from taskshare.data import multioutput as B
from taskshare.cli import main as cli_main
from taskshare.engine.multioutput import _identity, method_options, multitask_table, run_multitask
from taskshare.results.metrics import delta_m
from taskshare.results.report import find_results

TINY = {"n_train": 160, "n_test": 64, "dim": 6, "units": 4, "hidden": [12]}


def _cfg(**kw) -> RunConfig:
    base = dict(epochs=2, batch_size=32, lr=0.01, optimizer="adam", seed=0, benchmark=dict(TINY),
                checkpoint_minutes=1e9)
    base.update(kw)
    return RunConfig(**base)


def _toy_classification(seed, o):
    """A tiny 2-task classification set (no data package): task a = sign of x0, task b = argmax of x1..x3."""
    g = torch.Generator().manual_seed(o.data_seed)
    x = torch.randn(240, 5, generator=g)
    ys = {"a": (x[:, 0] > 0).long(), "b": x[:, 1:4].argmax(1)}
    pool = B.Split(x[:180], {k: v[:180] for k, v in ys.items()})
    test = B.Split(x[180:], {k: v[180:] for k, v in ys.items()})
    train, val = B._train_val(pool, 0.2, seed)
    tasks = (B.TaskSpec("a", "ce", 2, ("acc", "auc")), B.TaskSpec("b", "ce", 3, ("acc",)))
    return B.MultiTaskData("toy-cls", tasks, train, val, test, "mlp", (16,))


@dataclasses.dataclass
class _ToyOptions:
    data_seed: int = 0


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(B.MULTITASK_BENCHMARKS, "toy-cls",
                        B.MultiTaskBenchmark("toy classification", _toy_classification, _ToyOptions))
    return "toy-cls"


def test_results_fields_and_delta_m_against_a_stubbed_stl(tmp_path):
    cfg = _cfg()
    stub_test = {"t0": {"mse": 900.0}, "t1": {"mse": 9.0}, "t2": {"mse": 0.8}}
    stub_val = {"t0": {"mse": 950.0}, "t1": {"mse": 9.5}, "t2": {"mse": 0.9}}
    stl = {"identity": _identity("synthetic-imbalanced", "stl", cfg, {}), "config": cfg.to_dict(),
           "best_epoch": {"t0": 1, "t1": 2, "t2": 2}, "task_metrics": stub_test, "val_metrics": stub_val}
    atomic_write_json(tmp_path / "stl" / "results.json", stl)
    r = run_multitask("synthetic-imbalanced", "ew", cfg, tmp_path)
    on_disk = json.loads((tmp_path / "ew" / "results.json").read_text())
    assert on_disk["delta_m"] == pytest.approx(r["delta_m"])
    for key in ("benchmark", "method", "seed", "tasks", "params", "artifact_bytes", "time_s", "peak_rss_mb",
                "config", "versions", "task_metrics", "stl_baseline", "delta_m", "val_metrics", "history"):
        assert key in on_disk, key
    assert r["tasks"] == ["t0", "t1", "t2"] and r["acc_matrix"] is None and r["avg_acc"] is None
    # known answer: every task has one lower-is-better metric
    M = {t: r["task_metrics"][t]["mse"] for t in r["tasks"]}
    by_hand = 100 / 3 * sum(-(M[t] - stub_test[t]["mse"]) / stub_test[t]["mse"] for t in M)
    assert r["delta_m"] == pytest.approx(by_hand, rel=1e-12)
    assert (tmp_path / "ew" / r["stl_baseline"]["path"]).resolve() == (tmp_path / "stl" / "results.json").resolve()
    assert r["stl_baseline"]["task_metrics"] == stub_test
    # selection on validation only: the reported epoch maximises validation delta_m
    val_dm = [h["val_delta_m"] for h in r["history"]]
    assert r["best_epoch"] == 1 + max(range(len(val_dm)), key=lambda i: (val_dm[i], -i))
    assert r["val_delta_m"] == pytest.approx(max(val_dm))
    assert r["params"]["base"] == 6 * 12 + 12 and r["params"]["added_per_task"] == [13, 13, 13]
    art = tmp_path / "ew" / "artifacts"  # a task's bytes: its tensor file and its sidecar, as for lifelong runs
    sizes = {t: (art / f"{t}.safetensors").stat().st_size + (art / f"{t}.json").stat().st_size for t in r["tasks"]}
    assert r["artifact_bytes"] == sizes
    assert (tmp_path / "ew" / "artifacts" / "base.safetensors").is_file()
    assert not (tmp_path / "ew" / "checkpoint.safetensors").exists()


def test_stl_is_trained_once_and_reused(tmp_path, toy):
    cfg = _cfg(benchmark={})
    r = run_multitask(toy, "pcgrad", cfg, tmp_path)
    stl_file = tmp_path / "stl" / "results.json"
    stl = json.loads(stl_file.read_text())
    mtime = stl_file.stat().st_mtime_ns
    assert stl["method"] == "stl" and set(stl["best_epoch"]) == {"a", "b"}
    assert stl["params"]["base"] == 0 and len(stl["params"]["added_per_task"]) == 2
    assert r["delta_m"] == pytest.approx(delta_m(r["task_metrics"], stl["task_metrics"], r["higher_is_better"]))
    assert r["stl_baseline"]["config"] == stl["config"]
    run_multitask(toy, "adatask", cfg, tmp_path)
    assert stl_file.stat().st_mtime_ns == mtime       # reused, not retrained
    run_multitask(toy, "ew", _cfg(benchmark={}, epochs=1), tmp_path)
    assert json.loads(stl_file.read_text())["config"]["epochs"] == 1   # other settings: retrained
    # accuracies -> a joint-style acc_matrix the report code accepts
    assert r["acc_matrix"][0] == [None, None] and r["acc_matrix"][1] == [r["task_metrics"]["a"]["acc"],
                                                                         r["task_metrics"]["b"]["acc"]]
    loaded = find_results([tmp_path / "pcgrad"])
    assert loaded[0]["avg_acc"] == pytest.approx(r["avg_acc"])
    assert "a acc" in multitask_table([r]) and "Δm (%)" in multitask_table([r], markdown=True)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method,extra", [("adatask+pcgrad", {"record_au": True}), ("gradnorm", {}),
                                          ("dwa", {})])
def test_resume_equals_uninterrupted(tmp_path, method, extra):
    cfg = _cfg(epochs=3, methods={method: extra}, checkpoint_minutes=0.0)
    full = run_multitask("synthetic-imbalanced", method, cfg, tmp_path / "a")

    def stop(path, epoch):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        run_multitask("synthetic-imbalanced", method, cfg, tmp_path / "b", on_checkpoint=stop)
    assert (tmp_path / "b" / method / "checkpoint.safetensors").is_file()
    resumed = run_multitask("synthetic-imbalanced", method, cfg, tmp_path / "b", resume=True)
    assert resumed["task_metrics"] == full["task_metrics"]
    assert resumed["delta_m"] == full["delta_m"] and resumed["best_epoch"] == full["best_epoch"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "time_s"} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    for t in full["tasks"] + ["base"]:
        a, _ = load_tensors(tmp_path / "a" / method / "artifacts" / f"{t}.safetensors")
        b, _ = load_tensors(tmp_path / "b" / method / "artifacts" / f"{t}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    if extra.get("record_au"):
        assert resumed["au"] == full["au"]
    # a finished run is kept on --resume
    again = run_multitask("synthetic-imbalanced", method, cfg, tmp_path / "b", resume=True)
    assert again["time_s"] == resumed["time_s"]


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    def stop(path, epoch):
        raise _Stop

    with pytest.raises(_Stop):
        run_multitask("synthetic-imbalanced", "ew", _cfg(checkpoint_minutes=0.0), tmp_path, on_checkpoint=stop)
    with pytest.raises(ConfigError, match="other settings"):
        run_multitask("synthetic-imbalanced", "ew", _cfg(lr=0.02, checkpoint_minutes=0.0), tmp_path, resume=True)


def test_record_au_writes_the_plot_and_shares(tmp_path):
    cfg = _cfg(methods={"ew": {"record_au": "true"}, "adatask": {"record_au": True}})
    r = run_multitask("synthetic-imbalanced", "ew", cfg, tmp_path)
    run_multitask("synthetic-imbalanced", "adatask", cfg, tmp_path)
    assert (tmp_path / "ew" / "au.png").stat().st_size > 1000
    assert (tmp_path / "au_compare.png").stat().st_size > 1000
    assert r["au"]["kind"] == "adam" and set(r["au"]["shares"]) == {"encoder.fc1"}
    for shares in r["au"]["shares"].values():
        assert sum(shares) == pytest.approx(1.0) and len(shares) == 3


def test_bad_options_are_one_line_config_errors(tmp_path):
    cases = [
        (_cfg(methods={"adatask": {"bogus": 1}}), "adatask", "adatask.bogus"),
        (_cfg(methods={"adatask": {"variant": "lion"}}), "adatask", "variant"),
        (_cfg(methods={"cagrad": {"c": "lots"}}), "cagrad", "cagrad.c"),
        (_cfg(), "nope", "unknown multi-task method"),
        (_cfg(benchmark={"n_trian": 5}), "ew", "benchmark.n_trian"),
        (_cfg(precision="bf16"), "ew", "fp32"),
        (_cfg(model="resnet18"), "ew", "model="),
    ]
    for cfg, method, needle in cases:
        with pytest.raises(ConfigError) as e:
            run_multitask("synthetic-imbalanced", method, cfg, tmp_path)
        assert needle in str(e.value) and "\n" not in str(e.value)
    assert method_options("adatask", _cfg(methods={"adatask": {"variant": "rmsprop"}}))["variant"] == "rmsprop"
    with pytest.raises(ConfigError, match="unknown multi-task benchmark"):
        run_multitask("split-mnist", "ew", _cfg(), tmp_path)


def test_cli_entry_point(tmp_path, capsys):
    sets = ["--set", "optimizer=adam", "--set", "lr=0.01", "--set", "batch_size=32"]
    sets += [x for k, v in TINY.items() for x in ("--set", f"benchmark.{k}={json.dumps(v)}")]
    rc = cli_main(["run", "synthetic-imbalanced", "--method", "ew,adatask", "--set", "adatask.variant=adagrad",
               "--epochs", "1", "--out", str(tmp_path), "--quiet", *sets])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "adatask" in out.out and "Δm (%)" in out.out
    r = json.loads((tmp_path / "adatask" / "results.json").read_text())
    assert r["optimizer"] == "adatask-adagrad" and r["config"]["epochs"] == 1
    rc = cli_main(["run", "synthetic-imbalanced", "--method", "ew", "--set", "ew.wat=1", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "ew.wat" in err
