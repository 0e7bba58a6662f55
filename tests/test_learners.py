"""Every lifelong learner passes the same invariants; each method's own math is checked on known answers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taskshare.core import load_task, save_task
from taskshare.methods import METHODS, PATCH_ALIASES
from taskshare.methods.lifelong.ewc import EWC, diagonal_fisher
from taskshare.methods.blocks.distillation import distillation
from taskshare.models import TaskNet

# PAR has no single base network (each expert is its own TaskTensors; see methods/par/tensors.py). It joins
# the invariants that hold per task: it learns and keeps earlier tasks bit-identical (allocation), and a task's
# artifact round-trips (through PAR.save_artifact / load_artifact: an owner's artifact holds its whole expert,
# so a fresh learner needs no shared base). "Disabled = the base model" has no PAR counterpart: there is no
# base to fall back to. tests/test_par_*.py check its reuse, units, isolation and accounting.
SINGLE_BASE = [m for m in METHODS if m != "par" and m not in PATCH_ALIASES]  # aliases = `patches` + fixed kinds
PAR_TINY = dict(extractor="raw", channels=8, cells=2, steps=2, search_epochs=1)


def options(method):
    """Default options, except that patches run on the small CNN (the fixture's MLP has no norm layers) and
    PAR on tiny experts with raw-input relatedness."""
    cls = METHODS[method]
    if method == "par":
        return cls.Options(**PAR_TINY)
    return cls.Options(backbone="cnn") if method.startswith("patches") else cls.Options()


SEQUENTIAL = [m for m in SINGLE_BASE if not METHODS[m].offline]


def train(learner, task, index, cfg, steps=None):
    learner.begin_task(task, index)
    g = torch.Generator().manual_seed(index)
    for _ in range(cfg.epochs):
        for x, y in task.train.batches(cfg.batch_size, shuffle=True, generator=g):
            learner.observe(x, y)
    learner.end_task(task)


def predictions(learner, task):
    x, _ = task.test.to_tensors()
    return learner.predict(x, task.name)


@pytest.mark.parametrize("method", SEQUENTIAL + ["par"])
def test_learner_learns_and_keeps_earlier_heads_or_experts(method, stream, cfg):
    cls = METHODS[method]
    learner = cls(cfg, options(method), stream[0].input_shape)
    train(learner, stream[0], 0, cfg)
    head0 = {k: v.clone() for k, v in learner.tt.tensors("t0").items()}
    out0 = predictions(learner, stream[0])
    acc0 = (out0.argmax(1) == stream[0].test.y).float().mean()
    assert acc0 > 0.7, f"{method} did not learn task 0 ({acc0:.2f})"
    train(learner, stream[1], 1, cfg)
    after = learner.tt.tensors("t0")
    if method == "lwf":  # LwF optimises the old heads by design (paper); they must have moved
        assert not torch.equal(after["head.weight"], head0["head.weight"])
    else:
        for k, v in head0.items():
            assert torch.equal(after[k], v), f"{method} changed task 0's {k}"
    if method in ("expert-per-task", "par"):  # pure allocation (PAR: t1 is unrelated): task 0 is bit-identical
        assert torch.equal(predictions(learner, stream[0]), out0)


@pytest.mark.parametrize("method", SINGLE_BASE + ["par"])
def test_artifact_round_trip_reproduces_predictions(method, stream, cfg, tmp_path):
    cls = METHODS[method]
    learner = cls(cfg, options(method), stream[0].input_shape)
    if method == "par":  # its own artifact format (expert + head + genotype), onto a fresh learner
        train(learner, stream[0], 0, cfg)
        expected = predictions(learner, stream[0])
        learner.save_artifact("t0", tmp_path / "t0")
        fresh = cls(cfg, options(method), stream[0].input_shape)
        assert fresh.load_artifact(tmp_path / "t0") == "t0"
        assert torch.equal(predictions(fresh, stream[0]), expected)
        return
    if cls.offline:
        learner.begin_all(stream.tasks[:2])
        x, y = stream[1].train.to_tensors()
        learner.observe_mixed(x, y, torch.ones_like(y))
    else:
        train(learner, stream[0], 0, cfg)
    name = stream[0].name if not cls.offline else stream[1].name
    task = stream[0] if not cls.offline else stream[1]
    expected = predictions(learner, task)
    save_task(learner.tt, name, tmp_path / name)
    # a second learner with the same seed has the same base; load only this task's tensors into it
    fresh = cls(cfg, options(method), stream[0].input_shape)
    if not cls.offline and method != "expert-per-task":
        fresh.tt.load_state({**fresh.tt.state(), "shared": learner.tt.state()["shared"]})
    elif cls.offline:
        fresh.tt.load_state({**fresh.tt.state(), "shared": learner.tt.state()["shared"]})
    load_task(fresh.tt, tmp_path / name)
    assert torch.equal(predictions(fresh, task), expected)


@pytest.mark.parametrize("method", SINGLE_BASE)
def test_disabled_is_the_base_model(method, stream, cfg):
    cls = METHODS[method]
    learner = cls(cfg, options(method), stream[0].input_shape)
    base = {k: v.clone() for k, v in learner.tt.base_tensors().items()}
    if cls.offline:
        learner.begin_all(stream.tasks)
    else:
        train(learner, stream[0], 0, cfg)
    learner.tt.activate(None)
    for k, v in learner.tt.base_tensors().items():
        assert torch.equal(v, base[k])
        assert learner.net.get_parameter(k) is v if learner.tt.is_param(k) else learner.net.get_buffer(k) is v


def test_parameter_accounting(stream, cfg):
    ft = METHODS["finetune"](cfg, None, stream[0].input_shape)
    ft.begin_task(stream[0], 0)
    assert ft.tt.count("t0")["params"] == 400 * 3 + 3
    assert ft.tt.count_shared() == 36 * 400 + 400 + 400 * 400 + 400
    ex = METHODS["expert-per-task"](cfg, None, stream[0].input_shape)
    ex.begin_task(stream[0], 0)
    assert ex.tt.count_shared() == 0
    assert ex.tt.count("t0")["params"] == ft.tt.count_shared() + 400 * 3 + 3


def test_ewc_penalty_gradient_is_lambda_fisher_times_displacement(stream, cfg):
    opts = EWC.Options(lambda_=3.0)
    ewc = EWC(cfg, opts, stream[0].input_shape)
    train(ewc, stream[0], 0, cfg)
    anchor = {n: p.detach().clone() for n, p in ewc.shared().items()}
    fisher = {n: f.clone() for n, f in ewc.fisher_sum.items()}
    ewc.begin_task(stream[1], 1)
    with torch.no_grad():
        for p in ewc.shared().values():
            p.add_(0.01 * torch.randn_like(p))
    reg = ewc.regularizer(None, None)
    grads = torch.autograd.grad(reg, list(ewc.shared().values()))
    for (n, p), g in zip(ewc.shared().items(), grads):
        torch.testing.assert_close(g, 3.0 * fisher[n] * (p.detach() - anchor[n]), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("online", [False, True])
def test_ewc_penalty_value_is_the_sum_of_quadratics(stream, cfg, online):
    """The penalty's value (what the logged loss includes) is lambda/2 sum F (theta - theta*)^2 itself: 0 at the
    anchor, never negative; two tasks (online: one decayed Fisher anchored at the latest theta*)."""
    opts = EWC.Options(lambda_=300.0, online=online, gamma=0.5)
    ewc = EWC(cfg, opts, stream[0].input_shape)
    terms = []
    for i in range(2):
        train(ewc, stream[i], i, cfg)
        anchor = {n: p.detach().clone() for n, p in ewc.shared().items()}
        if online:
            terms = [(dict(ewc.fisher_sum), anchor)]
        else:
            before = {n: f.clone() for n, f in terms[-1][2].items()} if terms else {}
            fisher = {n: f - before.get(n, 0) for n, f in ewc.fisher_sum.items()}
            terms.append((fisher, anchor, {n: f.clone() for n, f in ewc.fisher_sum.items()}))
    def want() -> float:
        return sum(0.5 * 300.0 * float((t[0][n].double() * (p.detach().double() - t[1][n].double()) ** 2).sum())
                   for t in terms for n, p in ewc.shared().items())

    at_anchor = float(ewc.regularizer(None, None).detach())  # online: 0; else the first task's term only
    assert at_anchor == pytest.approx(want(), rel=1e-3, abs=1e-6) and at_anchor > -1e-6
    with torch.no_grad():
        for p in ewc.shared().values():
            p.add_(0.1 * torch.randn_like(p))
    assert want() > 1e-3 and float(ewc.regularizer(None, None).detach()) == pytest.approx(want(), rel=1e-4)


def test_fisher_matches_per_sample_loop():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    backbone.out_dim = 4
    net = TaskNet(backbone)
    head = {"head.weight": torch.randn(2, 4), "head.bias": torch.randn(2)}
    x, y = torch.randn(7, 3), torch.randint(0, 2, (7,))
    params = {f"backbone.{n}": p for n, p in backbone.named_parameters()}
    got = diagonal_fisher(net, params, head, x, y, "empirical", torch.Generator(), chunk=3)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(7):  # the reference: a plain per-sample loop
        logp = F.log_softmax(F.linear(backbone(x[i:i + 1]), head["head.weight"], head["head.bias"]), 1)[0, y[i]]
        for n, g in zip(params, torch.autograd.grad(logp, list(params.values()))):
            expected[n] += g.pow(2) / 7
    for n in params:
        torch.testing.assert_close(got[n], expected[n])


def test_distillation_known_answer():
    teacher = torch.tensor([[2.0, 0.0]])
    student = torch.tensor([[0.0, 0.0]])
    p = torch.softmax(teacher / 2, 1)
    assert distillation(student, teacher, 2.0).item() == pytest.approx(float(-(p * torch.log(torch.tensor(0.5))).sum()))
    # at student == teacher the gradient of the soft cross-entropy w.r.t. the student is zero
    s = teacher.clone().requires_grad_(True)
    distillation(s, teacher, 2.0).backward()
    assert s.grad.abs().max() < 1e-7


def test_lwf_has_no_regularizer_on_first_task_and_distils_afterwards(stream, cfg):
    lwf = METHODS["lwf"](cfg, METHODS["lwf"].Options(), stream[0].input_shape)
    lwf.begin_task(stream[0], 0)
    x, _ = stream[0].train.to_tensors()
    assert lwf.regularizer(x, lwf.net.features(x)) is None
    lwf.end_task(stream[0])
    lwf.begin_task(stream[1], 1)
    reg = lwf.regularizer(x, lwf.net.features(x))  # model == teacher: the soft CE equals the teacher entropy
    logits = lwf.predict(x, "t0")
    p = torch.softmax(logits / 2, 1)
    torch.testing.assert_close(reg, -(p * torch.log_softmax(logits / 2, 1)).sum(1).mean())


def test_joint_uses_each_samples_own_head(stream, cfg):
    joint = METHODS["joint"](cfg, None, stream[0].input_shape)
    joint.begin_all(stream.tasks)
    heads_before = {t: joint.tt.tensors(t)["head.weight"].clone() for t in stream.task_names}
    x, y = stream[1].train.to_tensors()
    joint.observe_mixed(x, y, torch.full_like(y, 1))
    assert torch.equal(joint.tt.tensors("t0")["head.weight"], heads_before["t0"])  # no sample of t0: no gradient
    assert not torch.equal(joint.tt.tensors("t1")["head.weight"], heads_before["t1"])


@pytest.mark.parametrize("method", SINGLE_BASE + ["par"])
def test_learners_see_only_how_to_train(method, stream, cfg):
    """A learner gets its own Options and the training settings, not the benchmark, outputs or other sections."""
    from taskshare.config import TrainSettings
    cfg.methods = {"ewc": {"lambda": 5.0}}
    learner = METHODS[method](cfg, options(method), stream[0].input_shape)
    assert isinstance(learner.cfg, TrainSettings) and learner.cfg.lr == cfg.lr
    assert not any(hasattr(learner.cfg, k) for k in ("methods", "benchmark", "limit", "checkpoint_minutes"))
