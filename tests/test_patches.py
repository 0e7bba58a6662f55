"""Model patches (Mudrakarta et al. 2019): kinds and counts, transfer isolation, artifacts, BN folding,
mixed-task batches, multi-task scheduling. Random-init, width-0.25 MobileNetV2 at 16 px keeps it fast; the
real checkpoint is exercised in test_pretrained.py."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from taskshare.core import TaskTensors, load_task
from taskshare.core.artifacts import read_sidecar
from taskshare.data import Stream
from taskshare.config import RunConfig
from taskshare.errors import ArtifactError, ConfigError, TaskshareError
from taskshare.methods.patches import (
    NAMED_PATCHES, Patches, PatchesMultiTask, PatchesOptions, bn_stat_slots, count_patch, inspect_backbone,
    kind_slots, mixed_forward, parse_kinds, patch_methods, patch_slots, stack_tasks,
)
from taskshare.models import MLP, TaskNet
from taskshare.models.mobilenetv2 import MobileNetV2, MobileNetV2Backbone

from conftest import make_task

CFG = RunConfig(epochs=1, batch_size=16, lr=0.05, checkpoint_minutes=1e9)
SHAPE = (1, 8, 8)


def options(kinds: str, **kw) -> PatchesOptions:
    return PatchesOptions(kinds=kinds, backbone="mobilenetv2-random", width=0.25, image_size=16, **kw)


def tasks() -> list:
    return [make_task(f"t{i}", 200 + i, n=48, classes=c, shape=SHAPE) for i, c in enumerate((3, 4, 2))]


def train(learner, task, index, steps: int = 3):
    learner.begin_task(task, index)
    x, y = task.train.to_tensors()
    for s in range(steps):
        idx = torch.arange(s * 16, s * 16 + 16) % len(y)
        learner.observe(x[idx], y[idx])
    learner.end_task(task)


def mixed_inputs(ts):
    xs, ids = zip(*[(t.test.to_tensors()[0], torch.full((len(t.test),), i)) for i, t in enumerate(ts)])
    perm = torch.randperm(sum(len(x) for x in xs), generator=torch.Generator().manual_seed(0))
    return torch.cat(xs)[perm], torch.cat(ids)[perm]


def clone(d):
    return {k: v.detach().clone() for k, v in d.items()}


# ------------------------------------------------------------------------------------ kinds and counts
def test_mobilenetv2_1_0_patch_counts_match_the_paper_table():
    model = MobileNetV2()
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    assert len(model.state_dict()) == 314
    c = count_patch(model, "scale-bias+depthwise+head")
    assert c["scale-bias"]["params"] == 34_112 and c["scale-bias"]["layers"] == 52
    assert c["depthwise"] == {"params": 64_224, "buffers": 0, "layers": 17}
    assert c["head"]["params"] == 1_281_000
    assert c["total"]["params"] == 34_112 + 64_224 + 1_281_000
    assert c["scale-bias"]["buffers"] == 34_112 + 52  # running mean/var + num_batches_tracked per BN
    assert count_patch(model, "full")["full"]["params"] == 3_504_872
    text = inspect_backbone("mobilenetv2", "scale-bias+depthwise+head")
    assert "3,504,872" in text and "34,112" in text and "64,224" in text and "in 17 layers" in text


def test_kind_definitions_on_a_small_mobilenet():
    net = TaskNet(MobileNetV2Backbone(SHAPE, width_mult=0.25))
    sb, _ = kind_slots(net, "scale-bias")
    assert "backbone.features.0.1.weight" in sb and "backbone.features.0.1.num_batches_tracked" in sb
    assert set(bn_stat_slots(net)) <= set(sb)
    dw, layers = kind_slots(net, "depthwise")
    assert layers == 17 and all(net.get_submodule(s.rsplit(".", 1)[0]).groups > 1 for s in dw)
    assert all(s.endswith(".bias") for s in kind_slots(net, "bias")[0])
    assert kind_slots(net, "head")[0] == ["head.weight", "head.bias"]
    full = {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()}
    assert set(patch_slots(net, "full")) == full
    wanted = set(sb) | {"head.weight", "head.bias"}
    assert patch_slots(net, "head+scale-bias") == [s for s in patch_slots(net, "full") if s in wanted]


def test_unknown_or_missing_kinds_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown patch kind 'scales'"):
        parse_kinds("scales+head")
    mlp = TaskNet(MLP((1, 4, 4), (8,)))
    with pytest.raises(ConfigError, match="'depthwise' does not apply to MLP.*head\\+bias\\+full") as e:
        patch_slots(mlp, "depthwise+head")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no normalization layers"):
        count_patch(mlp, "scale-bias")
    with pytest.raises(ConfigError, match="has no head"):
        Patches(CFG, options("scale-bias"), SHAPE)
    with pytest.raises(ConfigError, match="use --method patches-multitask"):
        Patches(CFG, options("head", mode="multi-task"), SHAPE)
    with pytest.raises(ConfigError, match="unknown backbone"):
        inspect_backbone("vgg", "head")
    with pytest.raises(ConfigError, match="unknown mode"):
        options("head", mode="joint")


# ---------------------------------------------------------------- transfer: isolation, artifacts, mixed
@pytest.fixture(scope="module", params=NAMED_PATCHES)
def trained(request):
    kinds = request.param
    torch.manual_seed(0)
    ts = tasks()
    learner = Patches(CFG, options(kinds), SHAPE)
    base = clone(learner.tt.base_tensors())
    shared = clone(learner.tt.shared_named_tensors())
    learner.begin_task(ts[0], 0)
    init0 = clone(learner.tt.tensors("t0"))
    train(learner, ts[0], 0)
    after0 = clone(learner.tt.tensors("t0"))
    x0 = ts[0].test.to_tensors()[0]
    preds0 = learner.predict(x0, "t0")
    for i in (1, 2):
        train(learner, ts[i], i)
    return {"kinds": kinds, "learner": learner, "tasks": ts, "base": base, "shared": shared, "init0": init0,
            "after0": after0, "preds0": preds0, "x0": x0}


def test_transfer_trains_only_the_patch_and_keeps_earlier_tasks_bit_identical(trained):
    learner, kinds = trained["learner"], trained["kinds"]
    assert torch.equal(learner.predict(trained["x0"], "t0"), trained["preds0"])
    for name, value in learner.tt.tensors("t0").items():
        assert torch.equal(value, trained["after0"][name]), f"{kinds}: task t0's {name} changed"
    for name, value in learner.tt.shared_named_tensors().items():
        assert torch.equal(value, trained["shared"][name]), f"{kinds}: shared {name} changed"
    for name, value in learner.tt.base_tensors().items():
        assert torch.equal(value, trained["base"][name])
    changed = [n for n, v in trained["after0"].items() if not torch.equal(v, trained["init0"][n])]
    assert "head.weight" in changed
    if "scale-bias" in kinds or kinds == "full":  # per-task statistics, re-estimated on the task at its end
        x = trained["tasks"][0].train.to_tensors()[0]  # 48 samples: 3 equal batches of 16
        with torch.no_grad(), learner.tt.use("t0"):
            h = learner.net.backbone.features[0][0](learner.net.backbone.prepare(x))
        torch.testing.assert_close(trained["after0"]["backbone.features.0.1.running_mean"], h.mean((0, 2, 3)))
        assert int(trained["after0"]["backbone.features.0.1.num_batches_tracked"]) == 3
    if kinds != "full":
        with learner.tt.use(None):  # the base binding: the placeholder head
            counts = count_patch(learner.net, kinds)["total"]
        head = learner.net.backbone.out_dim + 1  # the placeholder head has one class, t2's has two
        assert learner.tt.count("t2")["params"] == counts["params"] - head + 2 * head


def test_artifact_round_trip_reproduces_outputs_and_refuses_another_base(trained, tmp_path):
    learner, ts = trained["learner"], trained["tasks"]
    for t in learner.tt.tasks:
        learner.export(t, tmp_path / t)
    fresh = Patches(CFG, options(trained["kinds"]), SHAPE)  # same seed: same base
    for t in ts:
        load_task(fresh.tt, tmp_path / t.name)
        x = t.test.to_tensors()[0]
        assert torch.equal(fresh.predict(x, t.name), learner.predict(x, t.name))
    side = read_sidecar(tmp_path / "t1")
    assert set(side["tensors"]) == set(learner.tt.slots) and side["meta"]["kinds"] == trained["kinds"]
    if trained["kinds"] != "full":  # full has no shared part: every base fits
        other = Patches(RunConfig(**{**CFG.to_dict(), "seed": 1}), options(trained["kinds"]), SHAPE)
        with pytest.raises(ArtifactError, match="different base network"):
            load_task(other.tt, tmp_path / "t1")


def double_copy(learner):
    """The learner in float64: the mixed/per-task comparison then shows the math, not float32 rounding
    (random-init MobileNetV2 amplifies relative input noise about 100x)."""
    dl = copy.deepcopy(learner)
    dl.tt.activate(None)
    dl.net.double()
    for t in dl.tt.tasks:
        for v in dl.tt.tensors(t).values():
            if v.is_floating_point():
                v.data = v.data.double()
    return dl


@torch.no_grad()
def run_task(learner, x, task):
    learner.net.eval()
    with learner.tt.use(task):
        return learner.net(x)


def test_mixed_batch_equals_each_task_separately(trained):
    learner, ts = trained["learner"], trained["tasks"]
    x, ids = mixed_inputs(ts)
    d = double_copy(learner)
    with torch.no_grad():
        mixed = mixed_forward(d.net.eval(), d.tt, x.double(), ids)
    mixed32 = learner.predict_mixed(x, ids)
    assert mixed.shape == mixed32.shape == (len(x), 4) and mixed.dtype == torch.float64
    # float32: BN and heads agree to rounding; `full` also runs every 1x1 conv per sample (another conv
    # algorithm), whose rounding this random-init network amplifies ~100x
    tol = 1e-4 if trained["kinds"] == "full" else 1e-5
    for i, t in enumerate(ts):
        m = ids == i
        torch.testing.assert_close(mixed[m][:, :t.num_classes], run_task(d, x[m].double(), t.name), atol=1e-10, rtol=0)
        torch.testing.assert_close(mixed32[m][:, :t.num_classes], learner.predict(x[m], t.name), atol=tol, rtol=tol)
        assert torch.isneginf(mixed[m][:, t.num_classes:]).all()
    # reusable stacks and a subset/reordering of tasks
    stacks = stack_tasks(d.tt, ["t2", "t0"])
    m = ids != 1
    sub = (ids[m] == 0).long()  # t0 -> 1, t2 -> 0
    with torch.no_grad():
        out = mixed_forward(d.net, d.tt, x[m].double(), sub, stacks=stacks)
    torch.testing.assert_close(out[sub == 1][:, :3], run_task(d, x[m][sub == 1].double(), "t0"), atol=1e-10, rtol=0)


def test_bn_folding_matches_unfolded_outputs(trained, tmp_path):
    learner, ts, kinds = trained["learner"], trained["tasks"], trained["kinds"]
    if "scale-bias" not in kinds and kinds != "full":
        with pytest.raises(ConfigError, match="fold_bn"):
            learner.export("t1", tmp_path / "t1", fold_bn=True)
        return
    before = clone(learner.tt.tensors("t1"))
    learner.export("t1", tmp_path / "t1", fold_bn=True)
    for n, v in learner.tt.tensors("t1").items():  # the live patch is restored
        assert torch.equal(v, before[n])
    fresh = Patches(CFG, options(kinds), SHAPE)
    load_task(fresh.tt, tmp_path / "t1")
    folded = fresh.tt.tensors("t1")
    stem = "backbone.features.0.1"
    assert torch.equal(folded[f"{stem}.running_mean"], torch.zeros_like(before[f"{stem}.running_mean"]))
    assert read_sidecar(tmp_path / "t1")["meta"]["bn_folded"] is True
    x = ts[1].test.to_tensors()[0]
    folded_out, unfolded_out = fresh.predict(x, "t1"), learner.predict(x, "t1")
    torch.testing.assert_close(folded_out, unfolded_out, atol=1e-5, rtol=0)  # the spec's bound
    if x.device.type == "cpu":  # the fold uses torch's CPU eval-BN arithmetic: identical numbers
        assert torch.equal(folded_out, unfolded_out)
    mt = PatchesMultiTask(CFG, PatchesMultiTask.Options(kinds="depthwise+head", backbone="mobilenetv2-random",
                                                        width=0.25, image_size=16), SHAPE)
    mt.begin_all(ts[:1])
    with pytest.raises(ConfigError, match="scale/bias are shared"):  # they cannot absorb per-task statistics
        mt.export("t0", tmp_path / "mt", fold_bn=True)


# ------------------------------------------------------------ mixed forward: every per-sample module path
class _Mixed(nn.Module):
    """Conv (full), GroupNorm, depthwise conv with bias, BatchNorm1d, LayerNorm on (N, L, D), Linear on 3-D."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, groups=1)
        self.gn = nn.GroupNorm(2, 8)
        self.dw = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)
        self.bn = nn.BatchNorm1d(16)
        self.ln = nn.LayerNorm(4)
        self.mid = nn.Linear(4, 5)
        self.head = nn.Linear(16 * 5, 3)

    def forward(self, x):
        h = self.dw(self.gn(self.conv(x))).flatten(2)[..., :4]  # (N, 16, 4)
        h = self.mid(self.ln(self.bn(h)))                       # (N, 16, 5)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("kinds", ["full", "scale-bias+bias+head", "depthwise+bias", "scale-bias+depthwise"])
def test_mixed_forward_covers_conv_norm_linear_paths(kinds):
    torch.manual_seed(0)
    model = _Mixed().eval()
    tt = TaskTensors(model, patch_slots(model, kinds))
    for t in range(3):
        tt.add_task(f"k{t}", {n: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v
                             for n, v in tt.base_tensors().items()} | (
            {n: tt.base_tensors()[n].abs() + 0.5 for n in tt.slots if n.endswith("running_var")}))
    x, ids = torch.randn(10, 3, 6, 6), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 0])
    with torch.no_grad():
        mixed = mixed_forward(model, tt, x, ids)
        for t in range(3):
            with tt.use(f"k{t}"):
                torch.testing.assert_close(mixed[ids == t], model(x[ids == t]), atol=1e-5, rtol=1e-4)


def test_mixed_forward_refuses_train_mode_batchnorm():
    net = TaskNet(MobileNetV2Backbone(SHAPE, width_mult=0.25, image_size=16))
    tt = TaskTensors(net, patch_slots(net, "scale-bias+head"))
    tt.add_task("a")
    with pytest.raises(TaskshareError, match="call model.eval"):
        mixed_forward(net.train(), tt, torch.rand(2, *SHAPE), torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------------------- multi-task
def test_multi_task_touches_a_task_only_with_its_own_samples():
    torch.manual_seed(0)
    ts = tasks()[:2]
    mt = PatchesMultiTask(CFG, PatchesMultiTask.Options(kinds="scale-bias+depthwise+head",
                                                        backbone="mobilenetv2-random", width=0.25, image_size=16),
                          SHAPE)
    mt.begin_all(ts)
    assert mt.tt.shared_parameters(trainable_only=True), "the shared base trains in multi-task mode"
    before = {t.name: clone(mt.tt.tensors(t.name)) for t in ts}
    shared = clone(mt.tt.shared_named_tensors())
    x, y = ts[1].train.to_tensors()
    mt.observe_mixed(x[:16], y[:16], torch.ones(16, dtype=torch.long))  # a batch of task 1 only
    for n, v in mt.tt.tensors("t0").items():
        assert torch.equal(v, before["t0"][n]), f"task t0's {n} moved on a batch without t0"
    moved = [n for n, v in mt.tt.tensors("t1").items() if not torch.equal(v, before["t1"][n])]
    assert "head.weight" in moved and "backbone.features.0.1.running_mean" in moved
    assert any(not torch.equal(v, shared[n]) for n, v in mt.tt.shared_named_tensors().items())

    # a mixed batch: each task's BN statistics are the momentum update of its own samples' batch mean
    xa, ya = ts[0].train.to_tensors()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))  # the two tasks interleaved
    xm, ym = torch.cat([xa[:8], x[16:24]])[perm], torch.cat([ya[:8], y[16:24]])[perm]
    tid = torch.cat([torch.zeros(8), torch.ones(8)]).long()[perm]
    bn, stem = "backbone.features.0.1", mt.net.backbone.features[0][0]
    expected = {}
    with torch.no_grad():
        for i, t in enumerate(ts):
            h = stem(mt.net.backbone.prepare(xm[tid == i]))
            old = mt.tt.tensors(t.name)[f"{bn}.running_mean"].clone()
            expected[t.name] = 0.9 * old + 0.1 * h.mean((0, 2, 3))
            expected[t.name + "n"] = mt.tt.tensors(t.name)[f"{bn}.num_batches_tracked"] + 1
    mt.observe_mixed(xm, ym, tid)
    for t in ts:
        torch.testing.assert_close(mt.tt.tensors(t.name)[f"{bn}.running_mean"], expected[t.name])
        assert torch.equal(mt.tt.tensors(t.name)[f"{bn}.num_batches_tracked"], expected[t.name + "n"])


def test_bn_statistics_are_per_task_for_every_kind_but_a_head_alone():
    mt = PatchesMultiTask(CFG, PatchesMultiTask.Options(kinds="depthwise+head", backbone="mobilenetv2-random",
                                                        width=0.25, image_size=16), SHAPE)
    assert set(bn_stat_slots(mt.net)) <= set(mt.tt.slots)
    assert not mt.frozen_bn
    tr = Patches(CFG, options("depthwise+head"), SHAPE)  # transfer too: per-task statistics (issue 13)
    assert set(bn_stat_slots(tr.net)) <= set(tr.tt.slots) and not tr.frozen_bn
    probe = Patches(CFG, options("head"), SHAPE)  # a head alone is linear probing: shared, frozen statistics
    assert not set(bn_stat_slots(probe.net)) & set(probe.tt.slots) and len(probe.frozen_bn) == 52


# ------------------------------------------------------------------------------------ through the runner
def test_runner_gives_zero_forgetting_and_per_task_artifacts(tmp_path, monkeypatch):
    from taskshare.engine import lifelong as runner

    methods = {**patch_methods(), "patches": Patches}
    for name, cls in methods.items():
        monkeypatch.setitem(runner.METHODS, name, cls)
    cfg = RunConfig(**{**CFG.to_dict(), "epochs": 1,
                       "methods": {"scale-bias+head": {"backbone": "mobilenetv2-random", "width": 0.25,
                                                       "image_size": 16}}})
    stream = Stream("synthetic", tasks(), "synthetic")
    res = runner.run_method(stream, "scale-bias+head", cfg, tmp_path)
    R = res["acc_matrix"]
    assert all(R[i][j] == R[j][j] for i in range(3) for j in range(i))
    assert res["bwt"] == 0.0
    assert res["params"]["added_per_task"][0] == count_patch(TaskNet(MobileNetV2Backbone(SHAPE, 0.25)),
                                                            "scale-bias")["scale-bias"]["params"] + 3 * 1281
    assert (tmp_path / "scale-bias+head" / "artifacts" / "t2.safetensors").exists()
