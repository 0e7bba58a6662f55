"""A finished PAR run is usable: `taskshare predict` (via `PARModel`) reproduces the run's own test accuracies
exactly, mixed-task batches equal per-task predictions, and export / tampering fail in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from taskshare.cli import main
from taskshare.data import build_benchmark
from taskshare.engine.predict import open_model
from taskshare.api.par_model import PARModel

TINY = ["--set", "par.channels=4", "--set", "par.cells=2", "--set", "par.steps=2", "--set", "par.search_epochs=1",
        "--set", "par.extractor=raw", "--set", "par.reuse_threshold=0.7"]  # two experts, each reused once


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("par-run")
    code = main(["run", "digits-tiny", "-m", "par", "--epochs", "1", "--limit", "60", "--quiet",
                 "--set", "benchmark.n_tasks=5", *TINY, "--out", str(out)])
    assert code == 0
    return out, build_benchmark("digits-tiny", seed=0, options={"n_tasks": 5})


def _x(task):
    return task.test.transform(task.test.x)


def test_loaded_par_run_reproduces_its_test_accuracies(run):
    out, stream = run
    model = open_model(out / "par")
    assert isinstance(model, PARModel) and model.tasks == [t.name for t in stream.tasks]
    results = json.loads((out / "par" / "results.json").read_text())
    final = results["acc_matrix"][-1]
    reused = {d["expert"] for d in results["decisions"] if d["action"] == "reuse"}
    assert len(reused) == 2, results["decisions"]  # owners' and reusers' artifacts both loaded
    accs = [int((model(_x(t), task=t.name).argmax(1) == t.test.y).sum()) / len(t.test.y) for t in stream.tasks]
    assert accs == pytest.approx(final, abs=1e-7)
    assert model.class_names[stream.tasks[0].name] == stream.tasks[0].classes


def test_par_mixed_batch_equals_per_task_predictions(run, tmp_path, capsys):
    out, stream = run
    model = open_model(out / "par")
    a, b, c = stream.tasks[:3]
    x = torch.cat([_x(a)[:3], _x(b)[:2], _x(c)[:2]])
    names = [a.name] * 3 + [b.name] * 2 + [c.name] * 2
    mixed = model(x, task=names)
    for name, rows in ((a.name, slice(0, 3)), (b.name, slice(3, 5)), (c.name, slice(5, 7))):
        torch.testing.assert_close(mixed[rows, :model.num_classes[name]], model(x[rows], task=name), rtol=0, atol=0)
    np.save(tmp_path / "x.npy", torch.cat([a.test.x[:3], b.test.x[:2], c.test.x[:2]]).numpy())
    assert main(["predict", str(out / "par"), str(tmp_path / "x.npy"), *sum([["--task", n] for n in names], []),
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in rows] == mixed.argmax(1).tolist() and [r["task"] for r in rows] == names


def test_par_export_and_a_changed_artifact_fail_in_one_line(run, tmp_path, capsys):
    out, stream = run
    assert main(["export", str(out / "par"), "--task", stream.tasks[0].name]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a PAR run" in err and len(err.splitlines()) == 1
    manifest = out / "par" / "artifacts" / "manifest.json"
    m = json.loads(manifest.read_text())
    copy = tmp_path / "artifacts"
    copy.mkdir()
    for f in (out / "par" / "artifacts").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    m["tasks"][1]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(m))
    np.save(tmp_path / "x.npy", stream.tasks[0].test.x[:2].numpy())
    assert main(["predict", str(copy), str(tmp_path / "x.npy"), "--task", stream.tasks[0].name]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not match the manifest's checksum" in err and len(err.splitlines()) == 1
    with pytest.raises(Exception, match="unknown task 'nope'"):
        open_model(out / "par")(_x(stream.tasks[0]), task="nope")
