"""TAPS mechanics: the spec's faithfulness list (methods-taps.md §7) on tiny networks."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taskshare.core.serialize import load_tensors
from taskshare.errors import ArtifactError, ConfigError
from taskshare.methods.taps import (OFFICIAL_N, GatedLayer, active_layers, export_task, gated_layers, import_task,
                                    layer_sizes, merged_model, penalty, task_penalty, wrap)
from taskshare.models import TaskNet


class TinyCNN(nn.Module):
    """conv(no bias)-BN-ReLU, conv(bias)-BN-ReLU, pool, linear(bias): every gated case in four layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 6)
        self.out_dim = 6

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return torch.relu(self.fc(x.mean((2, 3))))


def tiny_net(seed: int = 0) -> TaskNet:
    torch.manual_seed(seed)
    net = TaskNet(TinyCNN())
    net.head = nn.Linear(6, 3)
    return net


def batch(seed: int = 1, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def randomise(tt, task, scale=0.05, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in tt.tensors(task).items():
            if name.endswith((".delta", ".delta_bias")):
                t.copy_(torch.randn(t.shape, generator=g) * scale)


def set_scores(tt, task, values: dict[str, float]):
    with torch.no_grad():
        for layer, v in values.items():
            tt.tensors(task)[f"{layer}.score"].fill_(v)


LAYERS = ["backbone.conv1", "backbone.conv2", "backbone.fc"]


def test_wrap_gates_conv_and_linear_but_not_the_head_and_declares_slots():
    net = tiny_net()
    tt = wrap(net)
    assert list(gated_layers(net)) == LAYERS
    assert isinstance(net.backbone.conv1, nn.Conv2d) and type(net.head) is nn.Linear
    slots = set(tt.slots)
    for layer in LAYERS:
        assert {f"{layer}.delta", f"{layer}.score"} <= slots
    assert "backbone.conv1.delta_bias" not in slots and "backbone.conv2.delta_bias" in slots
    assert {"backbone.bn1.weight", "backbone.bn1.bias", "backbone.bn1.running_mean", "backbone.bn1.running_var",
            "backbone.bn1.num_batches_tracked", "head.weight", "head.bias"} <= slots
    assert not any(p.requires_grad for p in tt.shared_parameters())  # frozen base
    shared = {f"{layer}.{leaf}" for layer in LAYERS for leaf in ("weight", "bias")} - {"backbone.conv1.bias"}
    assert set(tt.shared_named_tensors()) == shared


@pytest.mark.parametrize("train", [True, False])
def test_identity_at_init_is_bit_exact(train):
    net = tiny_net()
    ref = copy.deepcopy(net)
    tt = wrap(net)
    tt.add_task("a")
    x, _ = batch()
    net.train(train)
    ref.train(train)
    with tt.use("a"):
        out = net(x)                      # straight-through path (the task's score requires grad)
        with torch.no_grad():
            fast = net(x)                 # inference path
        layer_out = net.backbone.conv2(torch.ones(2, 4, 4, 4))
    expected = ref(x)
    assert (out - expected).abs().max().item() == 0 and torch.equal(out, expected)
    assert torch.equal(fast, expected)
    assert torch.equal(layer_out, ref.backbone.conv2(torch.ones(2, 4, 4, 4)))


def test_gate_is_inclusive_at_tau():
    layer = nn.Linear(5, 3)
    base = copy.deepcopy(layer)
    net = nn.Sequential(layer)
    tt = wrap(net, head=None, tau=0.1)
    tt.add_task("a")
    randomise(tt, "a")
    x = torch.randn(4, 5)
    ts = tt.tensors("a")
    below = torch.tensor(0.1 - 1e-7)
    assert below.item() < torch.tensor(0.1).item()  # distinct in float32
    with tt.use("a"):
        set_scores(tt, "a", {"0": 0.1})
        on = net(x)
        assert active_layers(tt, "a") == ["0"]
        set_scores(tt, "a", {"0": below.item()})
        off = net(x)
        assert active_layers(tt, "a") == []
    assert torch.equal(on, F.linear(x, base.weight + ts["0.delta"], base.bias + ts["0.delta_bias"]))
    assert torch.equal(off, base(x))


@pytest.mark.parametrize("mode", ["official", "size-weighted"])
def test_straight_through_score_gradient_matches_the_formula(mode):
    net = tiny_net()
    tt = wrap(net)
    tt.add_task("a")
    randomise(tt, "a")
    # conv1 active, conv2 inactive with a negative score (sign term), fc active
    set_scores(tt, "a", {"backbone.conv1": 0.15, "backbone.conv2": -0.05, "backbone.fc": 0.3})
    x, y = batch()
    lam = 0.7
    tt.activate("a")
    ref = merged_model(tt, "a").train()  # plain layers holding W_eff = W + 1[s>=tau]·ΔW
    for p in ref.parameters():
        p.requires_grad_(True)
    loss = F.cross_entropy(net(x), y) + task_penalty(tt, "a", lam, mode)
    loss.backward()
    F.cross_entropy(ref(x), y).backward()
    sizes = layer_sizes(net)
    total = sum(sizes.values())
    ts = tt.tensors("a")
    for layer in LAYERS:
        plain = ref.get_submodule(layer)
        s = ts[f"{layer}.score"]
        inner = (plain.weight.grad * ts[f"{layer}.delta"]).sum()
        if plain.bias is not None:
            inner = inner + (plain.bias.grad * ts[f"{layer}.delta_bias"]).sum()
        weight = 1 / OFFICIAL_N if mode == "official" else sizes[layer] / total
        expected = inner + lam * weight * torch.sign(s.detach())
        torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)
        if layer == "backbone.conv2":  # inactive: no delta gradient at all, but the score still learns
            assert torch.count_nonzero(ts[f"{layer}.delta"].grad) == 0
            assert torch.count_nonzero(ts[f"{layer}.delta_bias"].grad) == 0
            assert s.grad.item() != 0 and inner.item() != 0
        else:
            torch.testing.assert_close(ts[f"{layer}.delta"].grad, plain.weight.grad)
    assert all(p.grad is None for p in tt.shared_parameters())  # the frozen base gets nothing


def test_penalty_values_on_a_hand_example():
    s = torch.tensor([0.2, -0.4])
    sizes = torch.tensor([10, 30])
    assert penalty(s, sizes, 2.0, "size-weighted").item() == pytest.approx(2.0 * (10 * 0.2 + 30 * 0.4) / 40)
    assert penalty(s, sizes, 2.0, "official").item() == pytest.approx(2.0 * 0.6 / 52)
    net = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(2, 3, 3, bias=False))
    wrap(net, head=None)
    assert layer_sizes(net) == {"0": 3 * 4 + 4, "1": 2 * 3 * 9}
    with pytest.raises(ConfigError, match="penalty mode 'l2' is unknown"):
        penalty(s, sizes, 1.0, "l2")


def test_all_scores_below_tau_give_the_base_outputs():
    net = tiny_net()
    ref = copy.deepcopy(net)
    tt = wrap(net)
    tt.add_task("a")                       # norms and head: copies of the base's
    randomise(tt, "a", scale=1.0)
    set_scores(tt, "a", {layer: 0.0 for layer in LAYERS})
    x, _ = batch()
    with tt.use("a"):
        for layer in LAYERS:               # every gated layer computes the base layer's function
            inp = torch.randn(3, 4, 5, 5) if layer == "backbone.conv2" else torch.randn(3, 4) \
                if layer == "backbone.fc" else torch.randn(3, 1, 5, 5)
            assert torch.equal(net.get_submodule(layer)(inp), ref.get_submodule(layer)(inp))
        out = net.eval()(x)
    assert torch.equal(out, ref.eval()(x))  # norms frozen and the base head reused: bit-identical logits


def test_merged_model_is_plain_and_exact():
    net = tiny_net()
    tt = wrap(net)
    tt.add_task("a")
    randomise(tt, "a")
    set_scores(tt, "a", {"backbone.conv2": 0.0})
    x, _ = batch()
    with tt.use("a"), torch.no_grad():
        expected = net.eval()(x)
    merged = merged_model(tt, "a")
    assert not gated_layers(merged) and type(merged.backbone.conv1) is nn.Conv2d
    assert set(dict(merged.named_parameters())) == {n for n, _ in tiny_net().named_parameters()}
    assert torch.equal(merged(x), expected)
    assert torch.equal(merged.backbone.conv2.weight, net.backbone.conv2.weight)  # inactive: the base weight
    assert tt.active is None and gated_layers(net)  # the wrapped model is untouched


def test_export_holds_only_active_deltas_and_round_trips_exactly(tmp_path):
    net = tiny_net()
    tt = wrap(net)
    tt.add_task("a")
    randomise(tt, "a")
    x, y = batch()
    tt.activate("a")
    opt = torch.optim.SGD(tt.parameters("a"), lr=0.1)
    for _ in range(3):  # trained norms (incl. running stats), head, deltas
        opt.zero_grad()
        F.cross_entropy(net.train()(x), y).backward()
        opt.step()
    set_scores(tt, "a", {"backbone.conv2": 0.05})
    with torch.no_grad():
        expected = net.eval()(x)
    export_task(tt, "a", tmp_path / "a")
    tensors, _ = load_tensors(tmp_path / "a.safetensors")
    side = json.loads((tmp_path / "a.json").read_text())
    assert "backbone.conv2.delta" not in tensors and "backbone.conv2.delta_bias" not in tensors
    assert {"backbone.conv1.delta", "backbone.fc.delta", "backbone.fc.delta_bias"} <= set(tensors)
    assert all(f"{layer}.score" in tensors for layer in LAYERS)
    assert {"backbone.bn2.running_var", "head.weight"} <= set(tensors)
    assert side["meta"]["taps"]["active_layers"] == ["backbone.conv1", "backbone.fc"]
    assert side["omitted"] == ["backbone.conv2.delta", "backbone.conv2.delta_bias"]

    fresh = tiny_net()
    ftt = wrap(fresh)
    assert import_task(ftt, tmp_path / "a") == "a"
    with ftt.use("a"), torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)
    assert torch.equal(merged_model(ftt, "a")(x), expected)

    other = tiny_net()
    with pytest.raises(ArtifactError, match="another tau"):
        import_task(wrap(other, tau=0.2), tmp_path / "a")
    with pytest.raises(ArtifactError, match="different base network"):
        import_task(wrap(tiny_net(seed=5)), tmp_path / "a")


def test_tiny_transformer_attention_and_mlp_layers_are_gated():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=12, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertModel(config, add_pooling_layer=False)
            self.out_dim = 16

        def forward(self, ids):
            return self.bert(input_ids=ids).last_hidden_state[:, 0]

    torch.manual_seed(0)
    net = TaskNet(Features())
    ref = copy.deepcopy(net)
    tt = wrap(net, layer_types=("Linear",))
    names = list(gated_layers(net))
    for i in range(2):
        p = f"backbone.bert.encoder.layer.{i}"
        assert {f"{p}.attention.self.query", f"{p}.attention.self.key", f"{p}.attention.self.value",
                f"{p}.attention.output.dense", f"{p}.intermediate.dense", f"{p}.output.dense"} <= set(names)
        assert f"{p}.attention.output.LayerNorm.weight" in tt.slots
    assert len(names) == 12 and "backbone.bert.embeddings.LayerNorm.bias" in tt.slots
    tt.add_task("a")
    ids = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(0))
    with tt.use("a"):
        assert torch.equal(net(ids), ref(ids))  # identity at init
        query = f"{p}.attention.self.query"
        with torch.no_grad():
            tt.tensors("a")[f"{query}.delta"].normal_(0, 0.1)
        out = net(ids)
        assert not torch.equal(out, ref(ids))  # the query delta is used by the attention
        out.pow(2).sum().backward()
    assert tt.tensors("a")[f"{query}.score"].grad.abs().item() > 0


def test_multihead_attention_projections_are_skipped_with_a_warning():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    with pytest.warns(UserWarning, match="self_attn.out_proj"):
        tt = wrap(nn.Sequential(layer), head=None, layer_types=["Linear"])
    assert list(gated_layers(tt.model)) == ["0.linear1", "0.linear2"]
    assert "0.norm1.weight" in tt.slots


def test_bad_layer_types_and_missing_head_are_one_line_errors():
    with pytest.raises(ConfigError, match="layer type 'Conv9d' cannot be gated") as e:
        wrap(tiny_net(), layer_types=["Conv9d"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no head module 'classifier'"):
        wrap(tiny_net(), head="classifier")
    with pytest.raises(ConfigError, match="no layer of types Conv3d"):
        wrap(tiny_net(), layer_types=["Conv3d"])
    assert isinstance(tiny_net().backbone.conv1, nn.Conv2d) and not isinstance(tiny_net().backbone.conv1, GatedLayer)
