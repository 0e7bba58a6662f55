"""PAR's allocation units beyond the paper (``par.unit=patch|taps``): decisions, parameter accounting,
isolation of earlier tasks, composition with reuse, per-task artifacts and option errors."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import gauss_task, train_task

from taskshare.core.serialize import load_state
from taskshare.data import Stream, Task
from taskshare.config import RunConfig, check_options
from taskshare.engine.lifelong import run_method
from taskshare.errors import ArtifactError, ConfigError
from taskshare.methods import METHODS
from taskshare.methods.par import PAR, Options
from taskshare.methods.par.expert import ExpertNet
from taskshare.methods.taps import TAU, GatedLayer

SHAPE = (1, 8, 8)
# score="min": an expert is as related as its closest task, so a task related to the expert's owner is
# routed to reuse even after an unrelated unit joined the expert (with "mean" it would get a second unit)
TINY = dict(extractor="raw", channels=4, cells=2, steps=2, search_epochs=1, score="min")
CFG = RunConfig(epochs=2, batch_size=32, lr=0.05, checkpoint_minutes=1e9)

A = gauss_task("a", 1, 10)
A_SMALL = gauss_task("a-small", 1, 11, n=45)   # related to A, < 0.5 x its data: head-only reuse
A_AGAIN = gauss_task("a-again", 1, 12)         # related to A, as much data: transfer
B = gauss_task("b", 2, 20)                      # unrelated: allocation -> a unit on A's expert
C = gauss_task("c", 3, 30)                      # unrelated to both


def make(**options) -> PAR:
    return PAR(CFG, Options(**{**TINY, **options}), SHAPE)


def logits(learner: PAR, task: Task) -> torch.Tensor:
    return learner.predict(task.test.x, task.name)


def snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tensors.items()}


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(v, b[k]) for k, v in a.items())


def one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.fixture(scope="module", params=["patch", "taps"])
def run(request):
    """A (searched expert) -> B (a unit on A's expert) -> A-small (head-only reuse of that expert).
    taps_lambda=3 switches some of B's gated layers off (here 5 of 6), so inactive deltas are exercised."""
    par = make(unit=request.param, **({"taps_lambda": 3.0} if request.param == "taps" else {}))
    train_task(par, A, 0)
    snap = {"a": logits(par, A), "a_tensors": snapshot(par.tt.tensors("a")), "a_added": par.added_parameters("a")}
    train_task(par, B, 1)
    snap.update(a_after_b=logits(par, A), a_tensors_after_b=snapshot(par.tt.tensors("a")), b=logits(par, B),
                b_tensors=snapshot(par.experts[0].tt.tensors("b")))
    train_task(par, A_SMALL, 2)
    return par, snap


def test_decisions_record_the_unit(run):
    par, _ = run
    unit = par.options.unit
    rows = [(d["task"], d["action"], d["unit"], d["expert"], d["reuse"]) for d in par.decisions]
    assert rows == [("a", "allocate-search", "expert", 0, None), ("b", "allocate-search", unit, 0, None),
                    ("a-small", "reuse", None, 0, "head")]
    assert len(par.experts) == 1 and par.experts[0].layout == unit and par.experts[0].tasks == ["a", "b", "a-small"]
    b = par.decision("b")
    assert b["unit_from"] == "a" and "b" not in par.search_seconds and b["genotype_from"] is None
    assert [par.role(t) for t in ("a", "b", "a-small")] == ["owner", "unit", "reuse"]
    for d in par.decisions:
        assert d["added_params"] == par.added_parameters(d["task"])
    if unit == "taps":
        assert 0 <= b["taps_active"] <= b["taps_layers"] == sum(isinstance(m, GatedLayer)
                                                                for m in par.experts[0].net.modules())
    assert par.decision("a-small")["reuse_from"] == "a"  # the most related task on the expert
    json.dumps(par.decisions)


def test_added_parameters_equal_a_hand_count(run):
    par, snap = run
    net = par.experts[0].net
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    head = net.feature_dim * 3 + 3
    affine = sum(2 * m.num_features for m in bns)
    stats = sum(2 * m.num_features + 1 for m in bns)
    expected = head + affine
    if par.options.unit == "taps":
        gated = [m for m in net.modules() if isinstance(m, GatedLayer)]
        scores = par.experts[0].tt.tensors("b")
        active = [n for n, m in net.named_modules() if isinstance(m, GatedLayer) and scores[f"{n}.score"] >= TAU]
        expected += len(gated) + sum(net.get_submodule(n).weight.numel() for n in active)
    assert par.added_parameters("b") == expected and par.tt.count("b")["buffers"] == stats
    # the owner still adds its expert (now with its own BN copies) and head; a reuse adds its head
    reference = ExpertNet(par.experts[0].genotype, 1, 4, 2, 3)
    body = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("head."))
    assert par.added_parameters("a") == snap["a_added"] == body + head
    assert par.added_parameters("a-small") == head


def test_earlier_tasks_stay_bit_identical(run):
    par, snap = run
    assert torch.equal(snap["a_after_b"], snap["a"]) and torch.equal(logits(par, A), snap["a"])
    # the expert's weights and A's head, BN scale/bias and statistics are unchanged (same names and values)
    assert identical(snap["a_tensors_after_b"], snap["a_tensors"]) and identical(par.tt.tensors("a"), snap["a_tensors"])
    assert torch.equal(logits(par, B), snap["b"])  # the head-only reuse left the unit alone
    assert identical(par.experts[0].tt.tensors("b"), snap["b_tensors"])


def test_artifact_round_trip_is_exact(run, tmp_path):
    par, _ = run
    names = [d["task"] for d in par.decisions]
    for name in names:
        par.save_artifact(name, tmp_path / name)
    if par.options.unit == "taps":  # only the active layers' deltas are stored
        stored = json.loads((tmp_path / "b.json").read_text())["tensors"]
        assert sum(n.endswith(".delta") for n in stored) == par.decision("b")["taps_active"]
    fresh = make(unit=par.options.unit)
    for name in names:
        assert fresh.load_artifact(tmp_path / name) == name
    for task in (A, B, A_SMALL):
        assert torch.equal(logits(fresh, task), logits(par, task))
        assert fresh.added_parameters(task.name) == par.added_parameters(task.name)
    assert fresh.decisions == par.decisions and fresh.experts[0].layout == par.experts[0].layout
    assert set(fresh.prototypes) == set(names)


def test_artifact_mismatches_are_one_line_errors(run, tmp_path):
    par, _ = run
    for name in ("a", "b"):
        par.save_artifact(name, tmp_path / name)
    with pytest.raises(ArtifactError, match="load 'a''s artifact first") as err:
        make(unit=par.options.unit).load_artifact(tmp_path / "b")
    one_line(err)
    other = make(unit=par.options.unit)
    other.load_artifact(tmp_path / "a")
    with torch.no_grad():  # the same task name on another expert
        next(p for n, p in other.experts[0].net.named_parameters() if n.endswith("weight")).add_(1.0)
    with pytest.raises(ArtifactError, match="different expert") as err:
        other.load_artifact(tmp_path / "b")
    one_line(err)
    with pytest.raises(ArtifactError, match="channels=4.*channels=6") as err:
        make(unit=par.options.unit, channels=6).load_artifact(tmp_path / "a")
    one_line(err)
    with pytest.raises(ArtifactError, match="already"):
        other.load_artifact(tmp_path / "a")


def test_bad_unit_is_a_one_line_error_listing_the_units():
    with pytest.raises(ConfigError, match="unit must be one of expert, patch, taps") as err:
        check_options(Options, {"unit": "layer"}, "par")
    one_line(err)
    with pytest.raises(ConfigError, match="taps_penalty"):
        check_options(Options, {"taps_penalty": "l2"}, "par")


def test_transfer_reuse_of_an_expert_with_units():
    """KD runs each earlier task with its own BN/unit: zero gradient at step 0 (frozen BN); the unit's and the
    owner's own tensors are never touched, only the expert's shared weights are fine-tuned."""
    par = make(unit="taps")
    train_task(par, A, 0, epochs=1)
    train_task(par, B, 1, epochs=1)
    e0 = par.experts[0]
    owned = {t: snapshot(e0.tt.tensors(t)) for t in ("a", "b")}
    shared = snapshot(e0.tt.shared_named_tensors())
    par.begin_task(A_AGAIN, 2)
    assert (par.decisions[-1]["action"], par.decisions[-1]["reuse"]) == ("reuse", "transfer")
    assert [m for _, m in par._kd_groups] == [["a"], ["b"]]
    x = A_AGAIN.train.x[:32]
    par.distill_loss(x, e0.net.features(x)).backward()
    grads = [p.grad.abs().max() for p in e0.tt.shared_parameters() if p.grad is not None]
    assert grads and max(grads) <= 1e-4
    assert all(t.grad is None for ts in (e0.tt.tensors("a"), e0.tt.tensors("b")) for t in ts.values())
    for p in e0.tt.shared_parameters():
        p.grad = None
    for x, y in A_AGAIN.train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(0)):
        par.observe(x, y)
    par.end_task(A_AGAIN)
    assert all(identical(e0.tt.tensors(t), owned[t]) for t in owned)
    assert not identical(e0.tt.shared_named_tensors(), shared)
    assert par.added_parameters("a-again") == e0.net.feature_dim * 3 + 3


def test_a_unit_leaves_other_experts_untouched():
    par = make()  # whole experts for A and B ...
    train_task(par, A, 0, epochs=1)
    train_task(par, B, 1, epochs=1)
    before = {t.name: logits(par, t) for t in (A, B)}
    states = [snapshot(e.tt.state()["shared"]) for e in par.experts]
    par.options = Options(**{**TINY, "unit": "patch"})  # ... then units (as a run that switches unit)
    train_task(par, C, 2, epochs=1)
    d = par.decision("c")
    assert d["unit"] == "patch" and d["expert"] == d["closest"] and len(par.experts) == 2
    other = 1 - d["expert"]
    assert par.experts[other].layout == "expert" and identical(par.experts[other].tt.state()["shared"], states[other])
    assert all(torch.equal(logits(par, t), before[t.name]) for t in (A, B))


def test_runner_unit_run_and_exact_resume(tmp_path, monkeypatch):
    """unit=taps through the runner (results, artifacts); a run killed inside the unit's task resumes exactly
    (the penalty's warm-up counts samples, which the checkpoint holds)."""
    monkeypatch.setitem(METHODS, "par", PAR)
    stream = Stream("par-units", [A, B, A_SMALL])
    options = {**TINY, "unit": "taps", "taps_warmup_epochs": 1, "taps_lambda": 5.0}
    cfg = RunConfig(epochs=2, batch_size=32, lr=0.05, checkpoint_minutes=0, methods={"par": options})
    full = run_method(stream, "par", cfg, tmp_path / "full")
    assert [d["unit"] for d in full["decisions"]] == ["expert", "taps", None]
    assert full["params"]["added_per_task"] == [d["added_params"] for d in full["decisions"]]
    assert set(full["artifact_bytes"]) == {"a", "b", "a-small"}

    calls = {"n": 0}

    class Killed(Exception):
        pass

    def kill(path):
        calls["n"] += 1
        if calls["n"] == 3:  # after epoch 1 of task 1 (the unit)
            raise Killed

    with pytest.raises(Killed):
        run_method(stream, "par", cfg, tmp_path / "resumed", on_checkpoint=kill)
    ckpt, _ = load_state(tmp_path / "resumed" / "par" / "checkpoint.safetensors")
    assert (ckpt["task"], ckpt["epoch"]) == (1, 1) and ckpt["learner"]["seen"] == len(B.train)
    assert ckpt["learner"]["experts"][0]["layout"] == "taps"
    resumed = run_method(stream, "par", cfg, tmp_path / "resumed", resume=True)
    assert resumed["acc_matrix"] == full["acc_matrix"] and resumed["val_acc"] == full["val_acc"]
    assert resumed["params"] == full["params"]
    timeless = [r["decisions"] for r in (resumed, full)]
    assert timeless[0] == timeless[1]


@pytest.mark.parametrize("score_units, expected", [(False, "reuse"), (True, "allocate")])
def test_units_do_not_count_in_their_experts_score_unless_asked(score_units, expected):
    par = make(unit="patch", score="mean", score_units=score_units)
    for i, task in enumerate((A, B, A_SMALL)):
        train_task(par, task, i, epochs=1)
    d = par.decision("a-small")
    # the expert's score over its scored tasks: A alone (B is a unit), or the mean over A and the unrelated B
    rel = d["relatedness"]
    assert d["scores"][0] == pytest.approx(rel["a"] if not score_units else (rel["a"] + rel["b"]) / 2)
    assert rel["a"] <= 0.5 < (rel["a"] + rel["b"]) / 2 <= 0.75  # the example sits on both sides of 0.5
    assert d["action"] == expected and par.decision("b")["unit"] == "patch"
