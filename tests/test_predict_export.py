"""`taskshare predict` / `export` on a real run, and `taskshare.load` of a run's artifacts: the loaded and the
exported models reproduce the run's own test accuracies exactly and the library's outputs to 1e-6."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import taskshare
from taskshare.api.export import load_exported
from taskshare.cli import main
from taskshare.data import build_benchmark

METHODS = ("taps", "patches", "finetune", "expert-per-task")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["run", "digits-tiny", "-m", ",".join(METHODS), "--epochs", "1", "--limit", "60", "--quiet",
                 "--set", "benchmark.n_tasks=2", "--set", "patches.backbone=mobilenetv2-random",
                 "--set", "patches.width=0.25", "--set", "patches.image_size=16", "--out", str(out)])
    assert code == 0
    return out, build_benchmark("digits-tiny", seed=0, options={"n_tasks": 2})


def _x(task):
    return task.test.transform(task.test.x)


@pytest.mark.parametrize("method", METHODS)
def test_loaded_run_reproduces_its_test_accuracies(run, method):
    out, stream = run
    tm = taskshare.load(out / method / "artifacts").eval()
    final = json.loads((out / method / "results.json").read_text())["acc_matrix"][-1]
    with torch.no_grad():
        accs = [int((tm(_x(t), task=t.name).argmax(1) == t.test.y).sum()) / len(t.test.y) for t in stream.tasks]
    assert accs == pytest.approx(final, abs=1e-7)   # the run's accuracies (float32 means) exactly
    assert tm.class_names[stream.tasks[0].name] == stream.tasks[0].classes


@pytest.mark.parametrize("method", ["taps", "patches"])
@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_exported_model_equals_the_library(run, method, fmt, capsys):
    out, stream = run
    tm = taskshare.load(out / method / "artifacts").eval()
    for t in stream.tasks:
        target = out / f"{method}-{t.name}.{fmt}"
        assert main(["export", str(out / method), "--task", t.name, "--format", fmt, "--out", str(target)]) == 0
        model = load_exported(target) if fmt == "safetensors" else torch.jit.load(str(target))
        with torch.no_grad():
            assert (model(_x(t)) - tm(_x(t), task=t.name)).abs().max().item() <= 1e-6
    if method == "taps" and fmt == "safetensors":  # merged: plain layers, no gates
        merged = load_exported(out / f"taps-{stream.tasks[0].name}.safetensors")
        assert not any(hasattr(m, "taps_tau") for m in merged.modules())


def test_predict_prints_labels_and_probabilities_for_single_and_mixed_batches(run, tmp_path, capsys):
    out, stream = run
    a, b = stream.tasks[0], stream.tasks[1]
    np.save(tmp_path / "x.npy", torch.cat([a.test.x[:3], b.test.x[:2]]).numpy())
    assert main(["predict", str(out / "finetune"), str(tmp_path / "x.npy"), "--task", a.name]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "input,task,label,class,probability,probabilities" and len(lines) == 6
    tm = taskshare.load(out / "finetune" / "artifacts").eval()
    names = [a.name] * 3 + [b.name] * 2
    dest = tmp_path / "p.json"
    assert main(["predict", str(out / "finetune"), str(tmp_path / "x.npy"), *sum([["--task", n] for n in names], []),
                 "--out", str(dest)]) == 0
    rows = json.loads(dest.read_text())
    x = torch.cat([a.test.x[:3], b.test.x[:2]]).float() / 255
    with torch.no_grad():
        expected = tm(x, task=names).argmax(1).tolist()
    assert [r["label"] for r in rows] == expected and [r["task"] for r in rows] == names
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-5 and len(r["probabilities"]) == 5 for r in rows)


def test_predict_and_export_refuse_bad_input_in_one_line(run, tmp_path, capsys):
    out, stream = run
    name = stream.tasks[0].name
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 8, 8), np.uint8))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.uint8))
    cases = [
        (["predict", str(out / "finetune"), str(tmp_path / "wrong.npy"), "--task", name], "has shape (2, 3, 8, 8)"),
        (["predict", str(out / "finetune"), str(tmp_path / "obj.npy"), "--task", name], "no pickled objects"),
        (["predict", str(out / "finetune"), str(tmp_path / "x.npy"), "--task", "nope"], "unknown task 'nope'"),
        (["predict", str(out / "finetune"), str(tmp_path / "none.npy"), "--task", name], "is not a file"),
        (["predict", str(out), str(tmp_path / "x.npy"), "--task", name], "holds several methods' runs"),
        (["export", str(out / "taps"), "--task", "nope"], "has no task 'nope'"),
        (["export", str(tmp_path / "none"), "--task", name], "does not exist"),
    ]
    cases.append((["predict", str(out / "finetune"), str(tmp_path / "x.npy"), "--task", name, "--task", name,
                   "--task", name], "--task given 3 times for 2 inputs"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
