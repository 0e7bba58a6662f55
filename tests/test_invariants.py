"""One invariant matrix over every method of both settings (PEFT's habit), through the real drivers:

- **resume equality**: a run interrupted after a checkpoint and resumed ends with the same numbers and the
  same artifact tensors as an uninterrupted one (mid-task and at a task's end for lifelong learners);
- **artifact round trip**: what a run writes to ``artifacts/`` rebuilds the task models exactly (multi-output
  here; every lifelong learner in tests/test_learners.py, which also checks that training one task leaves
  the others untouched and that the disabled model is the base model).
"""
from __future__ import annotations

import pytest
import torch

import reference_runs as ref
from taskshare.core.artifacts import content_sha256, read_artifact
from taskshare.core.serialize import load_tensors
from taskshare.data.multioutput import build_multitask
from taskshare.engine.lifelong import run_method
from taskshare.engine.multioutput import evaluate, run_multitask
from taskshare.methods import METHODS, PATCH_ALIASES
from taskshare.methods.multioutput.networks import SingleTaskNets, build_model
from taskshare.methods.multioutput.options import MULTITASK_METHODS

LIFELONG = [m for m in METHODS if m not in PATCH_ALIASES]
MULTI_OUTPUT = list(MULTITASK_METHODS)


class Stop(Exception):
    pass


def _lifelong(method, out, **kw):
    from conftest import make_stream
    from taskshare.config import RunConfig
    opts = {"patches": {"backbone": "cnn"}, "patches-multitask": {"backbone": "cnn"}, "par": ref.PAR_TINY}
    cfg = RunConfig(epochs=3, batch_size=16, lr=0.05, model="mlp", checkpoint_minutes=0.0, seed=0,
                    methods={method: dict(opts[method])} if method in opts else {})
    return run_method(make_stream(3), method, cfg, out, **kw)


def _multi(method, out, **kw):
    from taskshare.config import RunConfig
    cfg = RunConfig(epochs=3, batch_size=64, lr=0.01, checkpoint_minutes=0.0, seed=0, limit=256)
    return run_multitask("synthetic-imbalanced", method, cfg, out, **kw)


def _same_artifacts(a_dir, b_dir):
    names = sorted(p.name for p in (a_dir / "artifacts").glob("*.safetensors"))
    assert names == sorted(p.name for p in (b_dir / "artifacts").glob("*.safetensors")) and names
    for n in names:
        a, _ = load_tensors(a_dir / "artifacts" / n)
        b, _ = load_tensors(b_dir / "artifacts" / n)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), n


@pytest.mark.parametrize("setting,method", [("lifelong", m) for m in LIFELONG] +
                         [("multi-output", m) for m in MULTI_OUTPUT])
def test_resume_equals_uninterrupted(setting, method, tmp_path):
    run = _lifelong if setting == "lifelong" else _multi
    full = run(method, tmp_path / "full")
    key = "acc_matrix" if setting == "lifelong" else "task_metrics"
    offline = setting == "multi-output" or METHODS[method].offline
    for stop_at in ((1, 2) if offline else (1, 3)):  # mid-task (1) and a task's end (3) for online learners
        calls = []

        def stop(path, *args, calls=calls, stop_at=stop_at):
            calls.append(path)
            if len(calls) == stop_at:
                raise Stop

        out = tmp_path / f"cut{stop_at}"
        with pytest.raises(Stop):
            run(method, out, on_checkpoint=stop)
        resumed = run(method, out, resume=True)
        assert resumed[key] == full[key], (method, stop_at)
        if setting == "lifelong":
            assert resumed["val_acc"] == full["val_acc"]
        else:
            assert [h["val_metrics"] for h in resumed["history"]] == [h["val_metrics"] for h in full["history"]]
        _same_artifacts(tmp_path / "full" / method, out / method)


@pytest.mark.parametrize("method", MULTI_OUTPUT)
def test_multi_output_artifacts_rebuild_the_selected_model(method, tmp_path):
    res = _multi(method, tmp_path)
    data = build_multitask("synthetic-imbalanced", 0).limit(256, 0)
    art = tmp_path / method / "artifacts"
    if method == "stl":
        model = SingleTaskNets({t: build_model(data, 1, "auto", (t,)) for t in data.task_names})
        parts, base_fp = model.nets, content_sha256({})
    else:
        model = build_model(data, 1, "auto")  # another seed: every tensor must come from the files
        enc, header = load_tensors(art / "base.safetensors")
        model.encoder.load_state_dict(enc)
        parts, base_fp = model.heads, header["base_fingerprint"]
        assert base_fp == content_sha256(enc)
    for t in data.task_names:
        side, tensors = read_artifact(art / t)  # the checked task-artifact format (checksums, header = sidecar)
        assert side["task"] == t and side["method"] == method and side["base_fingerprint"] == base_fp
        parts[t].load_state_dict(tensors)
    assert evaluate(model, data.test, data.tasks) == res["task_metrics"]
