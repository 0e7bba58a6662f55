"""The AU metric: hand-computed examples, consistency with the optimizers' updates, the loss-scale claim."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from taskshare.errors import ConfigError
from taskshare.methods.multioutput import AdaTaskAdam, AURecorder, MultiOutputNet, MultiTaskTrainer, plot_au


def T(x):
    return torch.tensor(x, dtype=torch.float64)


def test_sgd_hand_computed_example():
    rec = AURecorder({"layer": (0, 2)}, 2, "sgd", lr=1.0, gamma=0.5)
    # step 1: Delta^2 = [[1, 4], [1, 0]], AU = 0.5 Delta^2 = [[.5, 2], [.5, 0]]
    rec.update(T([[1.0, 2.0], [1.0, 0.0]]))
    # column shares (.5, .5) and (1, 0): mean over the layer (.75, .25)
    assert rec.shares()["layer"] == pytest.approx([0.75, 0.25], abs=1e-15)
    # step 2: AU = 0.5 AU + 0.5 [[0, 0], [4, 4]] = [[.25, 1], [2.25, 2]]: shares (.1, .9), (1/3, 2/3)
    rec.update(T([[0.0, 0.0], [2.0, 2.0]]))
    assert rec.shares()["layer"] == pytest.approx([(0.1 + 1 / 3) / 2, (0.9 + 2 / 3) / 2], abs=1e-15)
    assert rec.shares("median")["layer"] == pytest.approx([(0.1 + 1 / 3) / 2, (0.9 + 2 / 3) / 2], abs=1e-15)


def test_adam_and_adatask_first_step_shares():
    G = T([[1.0], [3.0]])
    adam = AURecorder({"w": (0, 1)}, 2, "adam", lr=0.1)
    adam.update(G)
    # Adam: Delta_k = -lr g_k / (|g_1 + g_2| + eps) = -lr (1/4, 3/4): rAU = (1/16, 9/16) / (10/16)
    torch.testing.assert_close(adam.last_delta, -0.1 * T([[0.25], [0.75]]), rtol=1e-7, atol=0)
    assert adam.shares()["w"] == pytest.approx([0.1, 0.9], rel=1e-7)
    ada = AURecorder({"w": (0, 1)}, 2, "adatask", lr=0.1)
    ada.update(G)
    # AdaTask: Delta_k = -lr sign(g_k): balanced
    assert ada.shares()["w"] == pytest.approx([0.5, 0.5], rel=1e-7)
    # learning-rate dominance: accumulated squared gradients (1, 9)
    assert ada.lr_shares()["w"] == pytest.approx([0.1, 0.9], rel=1e-12)


def test_split_updates_sum_to_the_optimizer_update():
    g = torch.Generator().manual_seed(0)
    K, D = 3, 5
    p_adam = nn.Parameter(torch.zeros(D, dtype=torch.float64))
    p_ada = nn.Parameter(torch.zeros(D, dtype=torch.float64))
    adam = torch.optim.Adam([p_adam], lr=0.01)
    ada = AdaTaskAdam([p_ada], [], K, lr=0.01)
    rec_adam = AURecorder({"p": (0, D)}, K, "adam", lr=0.01)
    rec_ada = AURecorder({"p": (0, D)}, K, "adatask", lr=0.01)
    for _ in range(6):
        G = torch.randn(K, D, dtype=torch.float64, generator=g) * T([[1.0], [10.0], [0.1]])
        before = p_adam.detach().clone(), p_ada.detach().clone()
        p_adam.grad = G.sum(0)
        adam.step()
        ada.step(G)
        rec_adam.update(G)
        rec_ada.update(G)
        torch.testing.assert_close(rec_adam.last_delta.sum(0), p_adam.detach() - before[0], rtol=1e-10, atol=1e-15)
        torch.testing.assert_close(rec_ada.last_delta.sum(0), p_ada.detach() - before[1], rtol=1e-10, atol=1e-15)


def test_layers_from_parameter_names_and_errors():
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    rec = AURecorder.for_params(list(net.named_parameters()), 2)
    assert rec.layers == {"0": (0, 9), "2": (9, 13)}
    with pytest.raises(ConfigError, match="no AU recorded"):
        rec.shares()
    with pytest.raises(ConfigError, match="2 x D"):
        rec.update(torch.zeros(3, 13))
    with pytest.raises(ConfigError, match="kind"):
        AURecorder({"a": (0, 1)}, 2, "adamw")
    named = [("a.weight", torch.zeros(2)), ("b.weight", torch.zeros(2)), ("a.bias", torch.zeros(1))]
    with pytest.raises(ConfigError, match="contiguous"):
        AURecorder.for_params(named, 2)


def test_loss_scale_dominates_adam_not_adatask(tmp_path):
    """Spec 8.8: task 1's loss x100. Under Adam task 1 takes ~all of the shared updates; under AdaTask ~half."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, dtype=torch.float64, generator=g)
    y = torch.tanh(x @ torch.randn(6, 2, dtype=torch.float64, generator=g))
    mse = lambda o, t: ((o[:, 0] - t) ** 2).mean()  # noqa: E731
    records = {}
    for method, kind in (("ew", "adam"), ("adatask", "adatask")):
        torch.manual_seed(0)
        enc = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh()).double()
        net = MultiOutputNet(enc, {"a": nn.Linear(16, 1).double(), "b": nn.Linear(16, 1).double()})
        rec = AURecorder.for_params(list(net.encoder.named_parameters()), 2, kind, lr=0.01)
        tr = MultiTaskTrainer(net, {"a": lambda o, t: 100 * mse(o, t), "b": mse}, method, lr=0.01, recorder=rec)
        for _ in range(60):
            tr.step(x, {"a": y[:, 0], "b": y[:, 1]})
        records[kind] = rec.shares("median")
    for layer in ("0", "2"):
        assert records["adam"][layer][0] > 0.95
        assert 0.4 < records["adatask"][layer][0] < 0.6
    out = plot_au(records, tmp_path / "plots" / "au.png", tasks=["a (x100)", "b"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["au.png"]  # no temp file left
    single = plot_au(records["adam"], tmp_path / "single.png")
    assert single.stat().st_size > 0
    with pytest.raises(ConfigError, match="3 task names"):
        plot_au(records, tmp_path / "x.png", tasks=["a", "b", "c"])
