"""The `par` learner: isolation, transfer/KD, BN modes, accounting, checkpoints, runner (spec §3-5, §10.3-10.8)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import gauss_task, train_task

from taskshare.core.serialize import load_state, save_state
from taskshare.data import Stream, Task
from taskshare.config import RunConfig, check_options
from taskshare.engine.lifelong import run_method
from taskshare.errors import ConfigError, TaskshareError
from taskshare.methods import METHODS
from taskshare.methods.blocks.distillation import distillation
from taskshare.methods.par import PAR, Options, kd_loss
from taskshare.methods.par.expert import ExpertNet

SHAPE = (1, 8, 8)
TINY = dict(extractor="raw", channels=4, cells=2, steps=2, search_epochs=1)
CFG = RunConfig(epochs=2, batch_size=32, lr=0.05, checkpoint_minutes=1e9)


def make(**options) -> PAR:
    return PAR(CFG, Options(**{**TINY, **options}), SHAPE)


def expert_state(learner: PAR, e: int) -> dict:
    s = learner.experts[e].tt.state()
    return {"shared": {k: v.clone() for k, v in s["shared"].items()},
            "tasks": {t: {k: v.clone() for k, v in ts.items()} for t, ts in s["tasks"].items()}}


def same(a: dict, b: dict, tasks=None) -> bool:
    ok = all(torch.equal(a["shared"][k], b["shared"][k]) for k in a["shared"])
    for t in tasks if tasks is not None else a["tasks"]:
        ok &= all(torch.equal(v, b["tasks"][t][k]) for k, v in a["tasks"][t].items())
    return ok


def logits(learner: PAR, task: Task) -> torch.Tensor:
    return learner.predict(task.test.x, task.name)


A = gauss_task("a", 1, 10)
A_SMALL = gauss_task("a-small", 1, 11, n=45)      # same distribution, < 0.5 x A's data: head-only reuse
A_AGAIN = gauss_task("a-again", 1, 12)            # same distribution, as much data: transfer
B = gauss_task("b", 2, 20)                         # unrelated


@pytest.fixture(scope="module")
def three():
    """A (search) -> B (new expert) -> A-small (head-only reuse of A's expert), with snapshots on the way."""
    par = make()
    train_task(par, A, 0)
    snap = {"e0": expert_state(par, 0), "a": logits(par, A)}
    train_task(par, B, 1)
    snap.update(e0_after_b=expert_state(par, 0), a_after_b=logits(par, A), e1=expert_state(par, 1), b=logits(par, B))
    train_task(par, A_SMALL, 2)
    return par, snap


def test_decisions(three):
    par, _ = three
    actions = [(d["task"], d["action"], d["expert"], d["reuse"]) for d in par.decisions]
    assert actions == [("a", "allocate-search", 0, None), ("b", "allocate-search", 1, None),
                       ("a-small", "reuse", 0, "head")]
    d = par.decisions[2]
    assert d["scores"][0] < 0.5 < 0.75 < d["scores"][1]
    assert set(d["relatedness"]) == {"a", "b"} and d["relatedness"]["a"] == d["scores"][0]
    assert par.search_seconds["a"] > 0 and "search_s" not in par.decisions[0] and par.decisions[0]["extractor"] == "raw"
    json.dumps(par.decisions)  # results.json-ready


def test_allocation_and_head_only_reuse_leave_older_tasks_bit_identical(three):
    par, snap = three
    assert same(snap["e0"], snap["e0_after_b"])               # allocating B did not touch expert 0
    assert torch.equal(snap["a"], snap["a_after_b"])
    assert same(snap["e0"], expert_state(par, 0), tasks=["a"])  # head-only reuse: expert 0 and A's head intact
    assert same(snap["e1"], expert_state(par, 1))
    assert torch.equal(logits(par, A), snap["a"]) and torch.equal(logits(par, B), snap["b"])


def test_parameter_accounting(three):
    par, _ = three
    e0 = par.experts[0]
    head = e0.net.feature_dim * 3 + 3
    assert par.tt.count("a-small")["params"] == head == par.count("a-small")["params"]
    reference = ExpertNet(e0.genotype, 1, 4, 2, 3)
    body = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("head."))
    assert par.tt.count("a")["params"] == body + head
    assert par.tt.count("b")["params"] == sum(p.numel() for n, p in par.experts[1].net.named_parameters()
                                              if not n.startswith("head.")) + head
    assert par.shared_parameter_count() == 0 and par.shared_tensors() == {}
    assert set(par.tt.tensors("a-small")) == {"head.weight", "head.bias"}


def test_unseen_task_is_a_one_line_error(three):
    par, _ = three
    with pytest.raises(TaskshareError, match="unknown task 'zzz'") as err:
        par.predict(A.test.x, "zzz")
    assert "\n" not in str(err.value)


def test_state_dict_roundtrip_rebuilds_experts(three, tmp_path):
    par, _ = three
    save_state(tmp_path / "s.safetensors", par.state_dict())
    state, _ = load_state(tmp_path / "s.safetensors")
    fresh = make()
    fresh.load_state_dict(state)
    assert [e.genotype for e in fresh.experts] == [e.genotype for e in par.experts]
    assert fresh.decisions == par.decisions and fresh.task_expert == par.task_expert
    for t in (A, B, A_SMALL):
        assert torch.equal(logits(fresh, t), logits(par, t))
        assert fresh.tt.count(t.name) == par.tt.count(t.name)


def test_two_identical_runs_write_identical_artifacts(tmp_path):
    """Same seed, same data => the same sidecar JSON bytes and tensors for every task (owner, new expert,
    transfer reuse); the search's wall time is only in extra_results()["timing"], never in an artifact.
    The .safetensors bytes are not compared yet (header key order, fixed in core/serialize.py)."""
    from safetensors.torch import load_file

    runs = []
    for run in ("one", "two"):
        par = make(search_epochs=2)
        for i, task in enumerate((A, B, A_AGAIN)):
            train_task(par, task, i, epochs=1)
        for task in (A, B, A_AGAIN):
            par.save_artifact(task.name, tmp_path / run / task.name)
        runs.append(par)
    assert [d["reuse"] for d in runs[0].decisions] == [None, None, "transfer"]
    for task in (A, B, A_AGAIN):
        one, two = tmp_path / "one" / task.name, tmp_path / "two" / task.name
        sidecar = one.with_suffix(".json").read_bytes()
        assert sidecar == two.with_suffix(".json").read_bytes(), task.name
        assert b"search_s" not in sidecar and b"seconds" not in sidecar
        ta, tb = load_file(one.with_suffix(".safetensors")), load_file(two.with_suffix(".safetensors"))
        assert set(ta) == set(tb) and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)
    results = [r.extra_results() for r in runs]
    assert json.dumps(results[0]["decisions"]) == json.dumps(results[1]["decisions"])
    assert set(results[0]) == {"decisions", "timing"}
    assert set(results[0]["timing"]["par_search_s"]) == {"a", "b"}  # the searched tasks (a reuse searches nothing)
    assert all(s > 0 for s in results[0]["timing"]["par_search_s"].values())


def test_kd_is_soft_cross_entropy_at_t2():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(kd_loss(s, t, 2.0, 0.0), distillation(s, t, 2.0))
    q = torch.softmax(t / 2, 1)
    p = torch.softmax(s, 1).pow(0.5)
    p = p / p.sum(1, keepdim=True)  # the official p^(1/2) renormalisation
    p = (p + 1e-5 / 4) / (1 + 1e-5)
    assert torch.allclose(kd_loss(s, t, 2.0, 1e-5), -(q * p.log()).sum(1).mean(), atol=1e-6)


def _transfer(bn: str):
    par = make(bn=bn)
    train_task(par, A, 0)
    train_task(par, B, 1)
    before = {"e0": expert_state(par, 0), "e1": expert_state(par, 1), "b": logits(par, B)}
    par.begin_task(A_AGAIN, 2)
    return par, before


def test_transfer_kd_gradient_is_zero_at_step_0_with_frozen_bn():
    par, before = _transfer("frozen")
    assert par.decisions[-1]["action"] == "reuse" and par.decisions[-1]["reuse"] == "transfer"
    net = par.experts[0].net
    net.eval()
    x = A_AGAIN.train.x[:32]
    par.distill_loss(x, net.features(x)).backward()
    grads = [p.grad.abs().max() for p in par.experts[0].tt.shared_parameters() if p.grad is not None]
    assert grads and max(grads) <= 1e-4
    for p in par.experts[0].tt.shared_parameters():
        p.grad = None
    gen = torch.Generator().manual_seed(0)
    for x, y in A_AGAIN.train.batches(32, shuffle=True, generator=gen):
        par.observe(x, y)
    par.end_task(A_AGAIN)
    after = expert_state(par, 0)
    assert same(before["e1"], expert_state(par, 1)) and torch.equal(logits(par, B), before["b"])
    weights = [k for k in after["shared"] if k.endswith("weight")]
    assert any(not torch.equal(before["e0"]["shared"][k], after["shared"][k]) for k in weights)  # fine-tuned ...
    assert all(torch.equal(before["e0"]["tasks"]["a"][k], after["tasks"]["a"][k]) for k in ("head.weight", "head.bias"))
    stats = [k for k in after["shared"] if k.endswith(("running_mean", "running_var"))]
    # ... but not its BN statistics
    assert stats and all(torch.equal(before["e0"]["shared"][k], after["shared"][k]) for k in stats)


def test_bn_modes_under_transfer():
    par, before = _transfer("shared")  # official: one drifting set of statistics
    gen = torch.Generator().manual_seed(0)
    x, y = next(A_AGAIN.train.batches(32, shuffle=True, generator=gen))
    par.observe(x, y)
    key = next(k for k in before["e0"]["shared"] if k.endswith("running_mean"))
    assert not torch.equal(par.experts[0].tt.state()["shared"][key], before["e0"]["shared"][key])

    par, before = _transfer("task")  # per-task statistics: A's stay, A-again's move
    par.observe(x, y)
    now = par.experts[0].tt.state()["tasks"]
    keys = [k for k in now["a"] if k.endswith("running_mean")]
    assert keys and all(torch.equal(now["a"][k], before["e0"]["tasks"]["a"][k]) for k in keys)
    assert any(not torch.equal(now["a-again"][k], now["a"][k]) for k in keys)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="bn must be one of") as err:
        check_options(Options, {"bn": "sometimes"}, "par")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="thresholds"):
        check_options(Options, {"reuse_threshold": 0.9, "cell_threshold": 0.5}, "par")
    with pytest.raises(ConfigError, match="image inputs"):
        PAR(CFG, Options(), (64,))


def test_expert_extractor_uses_the_experts_features():
    par = make(extractor="expert")
    train_task(par, A, 0, epochs=1)
    assert par.expert_prototypes["a"].shape == (3, par.experts[0].net.feature_dim)
    train_task(par, A_AGAIN, 1, epochs=1)
    d = par.decisions[1]
    assert d["extractor"] == "expert" and 0.0 <= d["relatedness"]["a"] <= 1.0
    assert par.prototypes == {}


def test_runner_end_to_end_and_exact_resume(tmp_path, monkeypatch):
    """duplicate task -> reuse (adds a head), unrelated task -> new expert; an interrupted run resumes exactly."""
    monkeypatch.setitem(METHODS, "par", PAR)
    stream = Stream("par-mini", [A, A_AGAIN, B])
    cfg = RunConfig(epochs=2, batch_size=32, lr=0.05, checkpoint_minutes=0, methods={"par": dict(TINY)})
    full = run_method(stream, "par", cfg, tmp_path / "full")
    head = 8 * 3 + 3
    added = full["params"]["added_per_task"]
    assert added[1] == head and added[0] > 10 * head and added[2] > 10 * head
    assert set(full["artifact_bytes"]) == {"a", "a-again", "b"}

    calls = {"n": 0}

    class Killed(Exception):
        pass

    def kill(path):
        calls["n"] += 1
        if calls["n"] == 3:  # the middle of task 2 (the transfer): teacher and optimizer moments are restored
            raise Killed

    with pytest.raises(Killed):
        run_method(stream, "par", cfg, tmp_path / "resumed", on_checkpoint=kill)
    ckpt, _ = load_state(tmp_path / "resumed" / "par" / "checkpoint.safetensors")
    assert (ckpt["task"], ckpt["epoch"]) == (1, 1)
    assert ckpt["learner"]["teacher"] is not None and ckpt["learner"]["optimizer"] is not None
    assert [d["reuse"] for d in ckpt["learner"]["decisions"]] == [None, "transfer"]
    resumed = run_method(stream, "par", cfg, tmp_path / "resumed", resume=True)
    assert resumed["acc_matrix"] == full["acc_matrix"] and resumed["val_acc"] == full["val_acc"]
    assert resumed["params"] == full["params"]
