"""TAPS learners: sequential isolation, frozen base, warm-up, joint and two-stage, runner resume, reports."""
from __future__ import annotations

import hashlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import make_stream, train_task

from taskshare.core.serialize import load_tensors
from taskshare.data import Stream
from taskshare.config import check_options
from taskshare.engine.lifelong import run_method
from taskshare.errors import ConfigError
from taskshare.methods import METHODS
from taskshare.methods.taps import (
    Taps,
    TapsJoint,
    TapsTwoStage,
    active_layers,
    import_task,
)
from taskshare.methods.taps.report import (
    format_summary,
    layer_table,
    plot_layers,
    summary,
)
from taskshare.models import build_backbone

LEARNERS = {cls.name: cls for cls in (Taps, TapsJoint, TapsTwoStage)}


@pytest.fixture(autouse=True)
def quiet_warmup_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sparsity penalty never switches on")
        yield


@pytest.fixture
def registered(monkeypatch):
    for name, cls in LEARNERS.items():
        monkeypatch.setitem(METHODS, name, cls)


def fit(learner, task, index, cfg, seed=0):
    train_task(learner, task, index, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed)


def logits(learner, task):
    return learner.predict(task.test.to_tensors()[0], task.name)


def base_hash(tt) -> str:
    h = hashlib.sha256()
    for name, t in sorted(tt.shared_named_tensors().items()):
        h.update(name.encode() + t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_options_from_set_and_one_line_errors():
    o = check_options(Taps.Options, {"lambda": "0.5", "penalty": "size-weighted", "layer_types": "[Linear]"}, "taps")
    assert (o.lambda_, o.penalty, o.layer_types, o.warmup_epochs, o.tau) == (0.5, "size-weighted", ("Linear",), None,
                                                                              0.1)
    for values, message in [({"penalty": "l2"}, "taps.penalty='l2' is unknown"),
                            ({"tau": "0"}, "taps.tau must be > 0"),
                            ({"lambda": "-1"}, "taps.lambda must be >= 0"),
                            ({"layer_types": "[Embedding]"}, "taps.layer_types has 'Embedding'"),
                            ({"backbone": "random"}, "taps.backbone='random' is not valid"),
                            ({"image_size": "4"}, "taps.image_size must be at least 8")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as e:
            check_options(Taps.Options, values, "taps")
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="taps-joint.backbone='first-task'"):
        check_options(TapsJoint.Options, {"backbone": "first-task"}, "taps-joint")


def test_sequential_first_task_is_the_base_and_earlier_tasks_stay_bit_identical(stream, cfg):
    opts = Taps.Options(lambda_=0.5, warmup_epochs=0)
    learner = Taps(cfg, opts, stream[0].input_shape)
    fit(learner, stream[0], 0, cfg)
    assert active_layers(learner.tt, "t0") == []  # the first task trained the base: no deltas
    acc0 = (logits(learner, stream[0]).argmax(1) == stream[0].test.y).float().mean()
    assert acc0 > 0.7
    frozen = base_hash(learner.tt)
    fingerprint = learner.tt.fingerprint()
    kept = {t.name: (logits(learner, t), {k: v.clone() for k, v in learner.tt.tensors(t.name).items()})
            for t in stream.tasks[:1]}
    for i, task in enumerate(stream.tasks[1:], start=1):
        fit(learner, task, i, cfg, seed=i)
        for name, (out, tensors) in kept.items():
            t = stream[name]
            assert torch.equal(logits(learner, t), out)
            assert all(torch.equal(learner.tt.tensors(name)[k], v) for k, v in tensors.items())
        kept[task.name] = (logits(learner, task), {k: v.clone() for k, v in learner.tt.tensors(task.name).items()})
    assert base_hash(learner.tt) == frozen and learner.tt.fingerprint() == fingerprint
    # later tasks started their norms... and learned deltas of their own
    assert all(learner.tt.tensors("t1")[f"{n}.delta"].abs().sum() > 0 for n in active_layers(learner.tt, "t1"))


def test_frozen_model_backbone_is_unchanged_and_weight_decay_spares_scores(stream, cfg):
    cfg.weight_decay = 0.1
    learner = Taps(cfg, Taps.Options(backbone="model", warmup_epochs=0), stream[0].input_shape)
    before = base_hash(learner.tt)
    fit(learner, stream[0], 0, cfg)
    assert base_hash(learner.tt) == before
    scores = {id(t) for n, t in learner.tt.tensors("t0").items() if n.endswith((".score", ".delta", ".delta_bias"))}
    for group in learner.optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert group["weight_decay"] == (0.0 if ids & scores else 0.1)
        assert not ids & scores or ids <= scores


def test_huge_lambda_switches_every_layer_off_to_the_base_function(stream, cfg):
    # "very large" relative to the data gradient, but with the L1 step lr·λ/52 = 0.019 below tau: a step
    # larger than tau makes the subgradient hop over zero and back above tau (see the module docstring)
    cfg.model, cfg.momentum = "cnn", 0.0
    learner = Taps(cfg, Taps.Options(lambda_=20.0, warmup_epochs=0, backbone="model"), stream[0].input_shape)
    fit(learner, stream[0], 0, cfg)
    assert active_layers(learner.tt, "t0") == []
    learner.tt.activate("t0")
    for layer in learner.layers:
        m = learner.net.get_submodule(layer)
        x = torch.randn(2, 64) if layer.endswith("fc.0") else torch.randn(2, m.in_channels, 6, 6)
        base = torch.nn.functional.linear(x, m.weight, m.bias) if layer.endswith("fc.0") else \
            m._conv_forward(x, m.weight, m.bias)
        assert torch.equal(m(x), base)


def test_warmup_counts_samples_into_epochs(stream, cfg):
    cfg.batch_size = 7  # 96 samples: 13 full batches and one of 5
    learner = Taps(cfg, Taps.Options(backbone="model", warmup_epochs=1), stream[0].input_shape)
    calls = []
    original = learner.penalty
    learner.penalty = lambda task: (calls.append(learner.epoch), original(task))[1]
    fit(learner, stream[0], 0, cfg)
    assert learner.seen == 2 * 96 and learner.epoch == 2
    assert calls == [1] * 14  # no penalty in epoch 0, every step of epoch 1


def test_warmup_longer_than_training_warns(stream, cfg):
    learner = Taps(cfg, Taps.Options(backbone="model", warmup_epochs=cfg.epochs), stream[0].input_shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner.begin_task(stream[0], 0)
    assert any("never switches on" in str(w.message) for w in caught)


def test_export_of_a_trained_learner_round_trips_onto_a_fresh_base(stream, cfg, tmp_path):
    opts = Taps.Options(backbone="model", lambda_=5.0, warmup_epochs=0)
    learner = Taps(cfg, opts, stream[0].input_shape)
    fit(learner, stream[0], 0, cfg)
    with torch.no_grad():  # make sure one layer is off, one on
        learner.tt.tensors("t0")[f"{learner.layers[0]}.score"].fill_(0.0)
        learner.tt.tensors("t0")[f"{learner.layers[1]}.score"].fill_(0.5)
    expected = logits(learner, stream[0])
    size = learner.save_artifact("t0", tmp_path / "t0")
    tensors, _ = load_tensors(tmp_path / "t0.safetensors")
    assert f"{learner.layers[0]}.delta" not in tensors and f"{learner.layers[1]}.delta" in tensors
    fresh = Taps(cfg, opts, stream[0].input_shape)  # same seed: same base
    import_task(fresh, tmp_path / "t0")
    assert torch.equal(logits(fresh, stream[0]), expected)
    assert torch.equal(fresh.merged_model("t0")(stream[0].test.to_tensors()[0]), expected)
    n_first = learner.tt.tensors("t0")[f"{learner.layers[0]}.delta"].numel()
    assert learner.added_parameters("t0") == sum(
        t.numel() for k, t in learner.tt.tensors("t0").items() if learner.tt.is_param(k)) - n_first - 400
    assert size < 4 * sum(t.numel() for t in learner.tt.tensors("t0").values())


def test_joint_trains_the_shared_base_and_only_the_present_tasks(stream, cfg):
    learner = TapsJoint(cfg, None, stream[0].input_shape)
    learner.begin_all(stream.tasks)
    before = base_hash(learner.tt)
    t0 = {k: v.clone() for k, v in learner.tt.tensors("t0").items()}
    x, y = stream[1].train.to_tensors()
    learner.observe_mixed(x, y, torch.ones_like(y))
    assert base_hash(learner.tt) != before  # the base is trained jointly
    assert all(torch.equal(learner.tt.tensors("t0")[k], v) for k, v in t0.items())
    assert not torch.equal(learner.tt.tensors("t1")["head.weight"], learner.tt.base_tensors()["head.weight"])


def test_two_stage_trains_the_base_with_heads_then_freezes_it(stream, cfg):
    cfg.epochs = 3
    learner = TapsTwoStage(cfg, TapsTwoStage.Options(joint_epochs=1, warmup_epochs=0), stream[0].input_shape)
    learner.begin_all(stream.tasks)
    xs = [t.train.to_tensors() for t in stream.tasks]
    x, y = torch.cat([a for a, _ in xs]), torch.cat([b for _, b in xs])
    ids = torch.repeat_interleave(torch.arange(3), torch.tensor([len(b) for _, b in xs]))
    start = base_hash(learner.tt)
    learner.observe_mixed(x, y, ids)  # one full-batch epoch: stage 1
    assert learner.stage == 1 and base_hash(learner.tt) != start
    assert all(torch.count_nonzero(learner.tt.tensors("t0")[f"{n}.delta"]) == 0 for n in learner.layers)
    stage1 = base_hash(learner.tt)
    learner.observe_mixed(x, y, ids)  # stage 2: per-task TAPS on the frozen base
    assert learner.stage == 2 and base_hash(learner.tt) == stage1
    assert all(torch.count_nonzero(learner.tt.tensors(t)[f"{learner.layers[0]}.delta"]) > 0 for t in ("t0", "t2"))
    with pytest.raises(ConfigError, match="needs more epochs"):
        TapsTwoStage(cfg, TapsTwoStage.Options(joint_epochs=3), stream[0].input_shape).begin_all(stream.tasks)


@pytest.mark.parametrize("method, model, stop_at, extra", [
    ("taps", "mlp", 2, {}),                             # mid task 0, while it trains the base
    ("taps", "cnn", 4, {}),                             # mid task 1: TAPS on the frozen base, penalty on
    ("taps", "cnn", 4, {"accumulate": 4, "lr_schedule": "cosine"}),  # leftover gradient in the checkpoint
    ("taps-joint", "mlp", 2, {}),
    ("taps-two-stage", "cnn", 1, {"joint_epochs": 2}),  # inside the joint stage: its shared norms restored
    ("taps-two-stage", "mlp", 2, {}),                   # inside the TAPS stage
])
def test_runner_resume_equals_uninterrupted(method, model, stop_at, extra, registered, cfg, tmp_path):
    cfg.checkpoint_minutes = 0.0  # a checkpoint at every epoch end and every task end
    cfg.epochs, cfg.model = 3, model
    cfg.methods = {method: {"warmup_epochs": 1, "lambda": 2.0, **extra}}
    full = run_method(make_stream(3), method, cfg, tmp_path / "full")
    assert full["avg_acc"] > 0.5

    class Interrupt(Exception):
        pass

    seen = []

    def crash(path):
        seen.append(path)
        if len(seen) == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_method(make_stream(3), method, cfg, tmp_path / "cut", on_checkpoint=crash)
    resumed = run_method(make_stream(3), method, cfg, tmp_path / "cut", resume=True)
    assert resumed["acc_matrix"] == full["acc_matrix"] and resumed["val_acc"] == full["val_acc"]
    for name in ("t0", "t1", "t2"):
        a, _ = load_tensors(tmp_path / "full" / method / "artifacts" / f"{name}.safetensors")
        b, _ = load_tensors(tmp_path / "cut" / method / "artifacts" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_report_counts_and_png(stream, cfg, tmp_path):
    learner = Taps(cfg, Taps.Options(), stream[0].input_shape)
    fit(learner, stream[0], 0, cfg)
    learner.begin_task(stream[1], 1)  # all layers active at init
    rows = layer_table(learner, "t1")
    assert [r["layer"] for r in rows] == ["backbone.fc1", "backbone.fc2"]
    assert [r["params"] for r in rows] == [36 * 400 + 400, 400 * 400 + 400] and all(r["active"] for r in rows)
    s = summary(learner)
    assert s["t0"]["active"] == 0 and s["t0"]["changed_params"] == 0 and s["t0"]["added_params"] == 2 + 3 * 400 + 3
    assert s["t1"]["fraction_changed"] == 1.0 and s["t1"]["fraction_layers"] == 1.0
    assert s["t1"]["added_params"] == learner.added_parameters("t1")
    assert "t1" in format_summary(s)
    out = plot_layers(learner, tmp_path / "layers.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["layers.png"]


# ----------------------------------------------------- official-compat mechanics (spec §7 item 9, §4 item 5)
class OfficialStandIn(torch.nn.Module):
    """A two-conv ResNet stand-in: bias-free convs (as every official conv) + BN + ReLU, global average pool."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 3, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(3)
        self.conv2 = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(4)
        self.out_dim = 4

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x))).mean((2, 3))


# learner slot / shared name -> name in the reference; `w*` are the frozen base weights
OFFICIAL_NAMES = {"backbone.conv1.weight": "w1", "backbone.conv1.delta": "d1", "backbone.conv1.score": "s1",
                  "backbone.bn1.weight": "g1", "backbone.bn1.bias": "b1", "backbone.bn1.running_mean": "m1",
                  "backbone.bn1.running_var": "v1", "backbone.conv2.weight": "w2", "backbone.conv2.delta": "d2",
                  "backbone.conv2.score": "s2", "backbone.bn2.weight": "g2", "backbone.bn2.bias": "b2",
                  "backbone.bn2.running_mean": "m2", "backbone.bn2.running_var": "v2",
                  "head.weight": "hw", "head.bias": "hb"}
REF_TRAINED = ("d1", "s1", "g1", "b1", "d2", "s2", "g2", "b2", "hw", "hb")


def reference_official(init, batches, *, lr, momentum, lam, accumulate, batches_per_epoch):
    """The official train_sequential.py loop written out on plain tensors (no taskshare code).

    Gated conv: W + 1[s >= 0.1]·ΔW with a straight-through gate (value 1[s >= τ], derivative 1 in s).
    Loss per batch: λ·Σ|s_i|/52 + CE (penalty on from the first batch). Every batch adds its gradient;
    after batch i of an epoch with i % accumulate == 0: p -= lr·buf, buf = g (first step) or μ·buf + g
    (torch SGD, no dampening/Nesterov/wd), then the gradient is zeroed; it is NOT zeroed at an epoch start.
    Returns (per-batch losses, tensors after each optimizer step, tensors after the last batch).
    """
    p = {n: t.detach().clone() for n, t in init.items()}
    for n in REF_TRAINED:
        p[n].requires_grad_(True)

    def gate(s):
        return (s >= 0.1).to(s.dtype) + (s - s.detach())  # s - s.detach() is exactly 0: value stays 0/1

    def bn(h, i):
        return F.batch_norm(h, p[f"m{i}"], p[f"v{i}"], p[f"g{i}"], p[f"b{i}"], training=True, momentum=0.1,
                            eps=1e-5)

    grads = dict.fromkeys(REF_TRAINED)
    buf: dict = {}
    losses, steps = [], []
    for b, (x, y) in enumerate(batches):
        h = torch.relu(bn(F.conv2d(x, p["w1"] + gate(p["s1"]) * p["d1"]), 1))
        h = torch.relu(bn(F.conv2d(h, p["w2"] + gate(p["s2"]) * p["d2"], padding=1), 2))
        logits = F.linear(h.mean((2, 3)), p["hw"], p["hb"])
        loss = lam * sum([abs(p["s1"]), abs(p["s2"])]) / 52 + F.cross_entropy(logits, y)
        losses.append(loss.detach())
        for n, g in zip(REF_TRAINED, torch.autograd.grad(loss, [p[n] for n in REF_TRAINED])):
            grads[n] = g if grads[n] is None else grads[n] + g
        if (b % batches_per_epoch) % accumulate == 0:
            with torch.no_grad():
                for n in REF_TRAINED:
                    buf[n] = grads[n].clone() if n not in buf else momentum * buf[n] + grads[n]
                    p[n] -= lr * buf[n]
            grads = dict.fromkeys(REF_TRAINED)
            steps.append({n: t.detach().clone() for n, t in p.items()})
    return losses, steps, {n: t.detach().clone() for n, t in p.items()}


def official_learner(cfg, accumulate, n_train, batch_size, lam, score2):
    torch.manual_seed(5)
    base = OfficialStandIn()
    cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.optimizer = batch_size, 0.05, 0.9, 0.0, "sgd"
    opts = Taps.Options(backbone="model", penalty="official", lambda_=lam, warmup_epochs=0, accumulate=accumulate)
    task = make_stream(1, n=n_train)[0]
    learner = Taps(cfg, opts, task.input_shape, backbone_module=base)
    learner.begin_task(task, 0)
    with torch.no_grad():  # the second layer starts just above tau, so step 0 switches it off
        learner.tt.tensors(task.name)["backbone.conv2.score"].fill_(score2)
    x, y = task.train.to_tensors()
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n_train, batch_size)]
    return learner, task, batches


def learner_tensors(learner, task):
    named = {**learner.tt.shared_named_tensors(), **learner.tt.tensors(task)}
    return {OFFICIAL_NAMES[n]: t.detach().clone() for n, t in named.items() if n in OFFICIAL_NAMES}


def assert_close(ours, ref, what, atol=1e-6):
    for n in ref:
        err = (ours[n] - ref[n]).abs().max().item()
        assert err <= atol, f"{what}: {n} differs from the official reference by {err:.3g}"


def test_official_compat_step0_step1_known_answer(cfg):
    lr, mu, lam, k = 0.05, 0.9, 4.0, 8
    learner, task, batches = official_learner(cfg, k, n_train=36, batch_size=4, lam=lam, score2=0.102)
    assert len(batches) == 9  # one epoch: step 0 after batch 0, step 1 after batches 1..8 (summed)
    init = learner_tensors(learner, task.name)
    losses, steps, _ = reference_official(init, batches, lr=lr, momentum=mu, lam=lam, accumulate=k,
                                          batches_per_epoch=9)
    assert len(steps) == 2
    ours_losses, snapshots = [], []
    for x, y in batches:
        ours_losses.append(learner.observe(x, y))
        snapshots.append(learner_tensors(learner, task.name))
    # step 0 (after batch 0): the deltas are 0, so dL/ds_i is the penalty's λ/52 alone (sign(s) = +1)
    penalty_grad = torch.tensor(lam / 52)
    for n, s0 in (("s1", 0.15), ("s2", 0.102)):
        expected = torch.tensor(s0) - lr * penalty_grad
        assert abs(snapshots[0][n] - expected) <= 1e-7, f"{n} after step 0: {snapshots[0][n]} != {expected}"
        assert abs(steps[0][n] - expected) <= 1e-7  # the reference agrees with the closed form
    assert snapshots[0]["s1"] >= 0.1 > snapshots[0]["s2"]  # conv2 is off for the whole step-1 window
    assert torch.count_nonzero(snapshots[0]["d1"]) > 0 and torch.count_nonzero(snapshots[0]["d2"]) > 0
    assert_close(snapshots[0], steps[0], "after step 0")
    # batches 1..7 only accumulate: nothing trained moves (BN running statistics do, every batch)
    for snap in snapshots[1:8]:
        assert all(torch.equal(snap[n], snapshots[0][n]) for n in REF_TRAINED)
    # step 1 (after batch 8): 8 summed batch gradients, the penalty's counted 8 times, momentum on step 0
    assert_close(snapshots[8], steps[1], "after step 1")
    assert (snapshots[8]["s1"] - snapshots[0]["s1"]).abs() > 8 * lr * lam / 52  # the 8x penalty (+ momentum)
    assert not torch.equal(snapshots[8]["d2"], snapshots[0]["d2"])  # an off delta still moves by momentum
    assert torch.equal(snapshots[8]["w1"], init["w1"]) and torch.equal(snapshots[8]["w2"], init["w2"])
    # loss of every batch: λ·Σ|s|/52 + CE, at step 0 λ·(0.15 + 0.102)/52 + CE of the base model
    torch.testing.assert_close(torch.stack(ours_losses), torch.stack(losses), rtol=0, atol=1e-6)
    assert any(abs(a - b) > 1e-3 for a, b in zip(losses[1:], losses[:-1]))


@pytest.mark.parametrize("accumulate", [2, 8])
def test_official_accumulation_carries_the_epoch_leftover_and_drops_the_last(accumulate, cfg):
    cfg.epochs = 2
    learner, task, batches = official_learner(cfg, accumulate, n_train=16, batch_size=4, lam=1.0, score2=0.15)
    init = learner_tensors(learner, task.name)
    stream = batches + batches  # two epochs of 4 batches (same order, the learner counts the epochs)
    losses, steps, last = reference_official(init, stream, lr=0.05, momentum=0.9, lam=1.0,
                                             accumulate=accumulate, batches_per_epoch=4)
    assert len(steps) == {2: 4, 8: 2}[accumulate]
    ours = [learner.observe(x, y) for x, y in stream]
    torch.testing.assert_close(torch.stack(ours), torch.stack(losses), rtol=0, atol=1e-6)
    assert_close(learner_tensors(learner, task.name), last, "after 2 epochs")
    ts = learner.tt.tensors(task.name)
    assert ts["backbone.conv1.score"].grad is not None  # the last epoch's leftover, not stepped on
    learner.end_task(task)
    assert all(t.grad is None for t in ts.values())  # ... and dropped at the task end, as the official script


def test_cosine_schedule_is_the_official_cosine_annealing(stream, cfg):
    cfg.epochs, cfg.lr = 4, 0.2
    learner = Taps(cfg, Taps.Options(backbone="model", lr_schedule="cosine"), stream[0].input_shape)
    official = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(official, T_max=cfg.epochs - 1)  # `epochs` = E + 1
    learner.begin_task(stream[0], 0)
    x, y = stream[0].train.to_tensors()
    for epoch in range(cfg.epochs):
        learner.begin_epoch(epoch)
        learner.observe(x[:8], y[:8])
        assert [g["lr"] for g in learner.optimizer.param_groups] == pytest.approx(
            [official.param_groups[0]["lr"]] * len(learner.optimizer.param_groups), abs=1e-12)
        official.step()
        scheduler.step()
    assert learner.optimizer.param_groups[0]["lr"] == 0.0  # the official extra epoch trains at lr 0


def test_official_mechanics_options_are_checked():
    o = check_options(Taps.Options, {"accumulate": "8", "lr_schedule": "cosine"}, "taps")
    assert (o.accumulate, o.lr_schedule) == (8, "cosine")
    assert (Taps.Options().accumulate, Taps.Options().lr_schedule) == (1, "constant")
    for cls, section, values, message in [
            (Taps.Options, "taps", {"accumulate": "0"}, "taps.accumulate must be >= 1"),
            (Taps.Options, "taps", {"lr_schedule": "step"}, "taps.lr_schedule='step' is unknown"),
            (TapsJoint.Options, "taps-joint", {"accumulate": "8"}, "only supported by method taps"),
            (TapsTwoStage.Options, "taps-two-stage", {"lr_schedule": "cosine"}, "only supported by method taps")]:
        with pytest.raises(ConfigError, match=message):
            check_options(cls, values, section)


def test_backbone_auto_freezes_pretrained_bases_and_trains_random_ones_on_task_one(stream, cfg):
    shape = stream[0].input_shape
    assert Taps.Options().backbone == "auto"
    assert Taps(cfg, Taps.Options(), shape).backbone_mode == "first-task"          # random MLP
    given = Taps(cfg, Taps.Options(), shape, backbone_module=build_backbone("mlp", shape, 0))
    assert given.backbone_mode == "model"                                         # a module you pass in
    assert Taps(cfg, Taps.Options(backbone="first-task"), shape,
                backbone_module=build_backbone("mlp", shape, 0)).backbone_mode == "first-task"  # explicit wins


def test_runner_resolves_model_auto_to_the_streams_default_model(stream, cfg, tmp_path):
    import dataclasses

    auto = dataclasses.replace(cfg, model="auto", epochs=1)
    named = Stream(stream.name, stream.tasks[:2], default_model="cnn")
    r_auto = run_method(named, "finetune", auto, tmp_path / "a")
    r_cnn = run_method(Stream(stream.name, stream.tasks[:2]), "finetune", dataclasses.replace(auto, model="cnn"),
                       tmp_path / "b")
    r_mlp = run_method(Stream(stream.name, stream.tasks[:2]), "finetune", auto, tmp_path / "c")
    assert r_auto["params"] == r_cnn["params"] != r_mlp["params"]
    assert r_auto["acc_matrix"] == r_cnn["acc_matrix"]
    assert r_auto["config"]["model"] == "auto"  # the config is recorded as given


def test_default_warmup_is_the_official_share_so_a_default_run_applies_the_penalty(tmp_path):
    """3 of 31 epochs as in the official recipe: 3 at 31, 1 at 10, 0 at the default 2 (issue 13)."""
    from taskshare.methods.taps.config import warmup_for
    o = Taps.Options()
    assert [warmup_for(o, e) for e in (2, 10, 31)] == [0, 1, 3]
    assert warmup_for(Taps.Options(warmup_epochs=5), 2) == 5
    from taskshare.config import RunConfig
    from taskshare.data import build_benchmark
    stream = build_benchmark("digits-tiny", seed=0, options={"n_tasks": 2})
    cfg = RunConfig(epochs=2, model="cnn", methods={"taps": {"lambda": 2.0}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "penalty never switches on" warning at the defaults
        res = run_method(stream, "taps", cfg, tmp_path, benchmark="digits-tiny", quiet=True)
    taps = res["taps"]
    assert taps["warmup_epochs"] == 0 and taps["lambda"] == 2.0
    second = taps["tasks"][stream[1].name]   # the first task trains the random base ("first-task")
    assert second["penalty"] > 0 and 0 < second["active"] < second["layers"] == 5


def test_image_size_sets_the_mobilenet_input_side(cfg):
    """taps.image_size is the side MobileNetV2 resizes images to (as patches.image_size): the input the
    convolutions see changes, and the backbone records it so an exported task rebuilds the same base."""
    import dataclasses

    small = dataclasses.replace(cfg, model="mobilenetv2-random")
    seen = {}
    for side in (16, 24):
        learner = Taps(small, Taps.Options(image_size=side, backbone="model"), (1, 12, 12))
        first = next(m for m in learner.net.modules() if isinstance(m, torch.nn.Conv2d))
        hook = first.register_forward_hook(lambda m, i, o, side=side: seen.__setitem__(side, i[0].shape[-1]))
        learner.net.backbone(torch.zeros(2, 1, 12, 12))
        hook.remove()
        assert learner.net.backbone.taskshare_builder["image_size"] == side
    assert seen == {16: 16, 24: 24}
