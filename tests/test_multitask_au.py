"""The AU metric: hand-computed examples, consistency with the optimizers' updates, the loss-scale claim."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from taskshare.errors import ConfigError
from taskshare.methods.multioutput import (
    AdaTaskAdam, AURecorder, MultiOutputNet, MultiTaskTrainer, per_task_gradients, plot_au,
)
from taskshare.methods.multioutput.aggregators import pcgrad_project


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


# ---- AU recorded from the optimizer's actual update (issue 14)

def _setup(K: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, dtype=torch.float64, generator=g)
    y = torch.tanh(x @ torch.randn(5, K, dtype=torch.float64, generator=g))
    y[:, 0] = -3 * y[:, 0]  # task gradients that conflict on the shared layers
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh()).double()
    tasks = [f"t{k}" for k in range(K)]
    net = MultiOutputNet(enc, {t: nn.Linear(8, 1).double() for t in tasks})
    mse = lambda o, t: ((o[:, 0] - t) ** 2).mean()  # noqa: E731
    return net, {t: mse for t in tasks}, x, {t: y[:, k] for k, t in enumerate(tasks)}


def _task_grads(net, fns, x, ys):
    z = net.encode(x)
    out = net.decode(z)
    losses = [fns[t](out[t], ys[t]) for t in net.tasks]
    return per_task_gradients(losses, list(net.encoder.parameters()), "loop")


def _shared(net):
    return torch.cat([p.detach().reshape(-1) for p in net.encoder.parameters()])


def _flat_state(opt, name):
    return torch.cat([opt.state[p][name].reshape(opt.n_tasks, -1) for p in opt.shared], dim=1).clone()


@pytest.mark.parametrize("variant", ["rmsprop", "adagrad", "adam"])
def test_adatask_au_is_the_update_the_optimizer_applied(variant):
    net, fns, x, ys = _setup()
    lr, K = 0.01, 3
    rec = AURecorder.for_params(list(net.encoder.named_parameters()), K, "adatask", lr=lr)
    tr = MultiTaskTrainer(net, fns, "adatask", optimizer=variant, lr=lr, recorder=rec)
    name = {"rmsprop": "square_avg", "adagrad": "sum", "adam": "exp_avg_sq"}[variant]
    for t in range(1, 6):
        G = _task_grads(net, fns, x, ys)  # independent per-task gradients at the current parameters
        tr.prepare(x, ys)
        opt = tr.optimizer
        acc0 = _flat_state(opt, name) if t > 1 else torch.zeros_like(G)
        m0 = _flat_state(opt, "exp_avg") if t > 1 and variant == "adam" else torch.zeros_like(G)
        before = _shared(net)
        tr.step(x, ys)
        acc = _flat_state(opt, name)
        eps = opt.param_groups[0]["eps"]
        if variant == "rmsprop":
            a = opt.param_groups[0]["alpha"]
            torch.testing.assert_close(acc, a * acc0 + (1 - a) * G * G, rtol=1e-12, atol=0)
            u = G / (acc.sqrt() + eps)
        elif variant == "adagrad":
            torch.testing.assert_close(acc, acc0 + G * G, rtol=1e-12, atol=0)
            u = G / (acc.sqrt() + eps)
        else:
            b1, b2 = opt.param_groups[0]["betas"]
            m = b1 * m0 + (1 - b1) * G
            torch.testing.assert_close(acc, b2 * acc0 + (1 - b2) * G * G, rtol=1e-12, atol=0)
            u = (m / (1 - b1 ** t)) / (acc.sqrt() / (1 - b2 ** t) ** 0.5 + eps)
        torch.testing.assert_close(rec.last_delta, -lr * u, rtol=1e-10, atol=1e-16)
        torch.testing.assert_close(rec.last_delta.sum(0), _shared(net) - before, rtol=1e-10, atol=1e-16)
        torch.testing.assert_close(rec.vk, acc, rtol=0, atol=0)  # learning-rate dominance: its accumulator
    if variant != "adam":  # the old simulated Adam-AdaTask AU differs from the actual update
        sim = AURecorder({"all": (0, G.shape[1])}, K, "adatask", lr=lr)
        sim.update(G)
        assert not torch.allclose(sim.last_delta, rec.last_delta, rtol=1e-3)


def test_sgd_momentum_au_splits_the_momentum_buffer():
    net, fns, x, ys = _setup()
    lr, mu, K = 0.05, 0.9, 3
    rec = AURecorder.for_params(list(net.encoder.named_parameters()), K, "sgd", lr=lr)
    tr = MultiTaskTrainer(net, fns, "ew", optimizer="sgd", momentum=mu, lr=lr, recorder=rec)
    bufs = None
    for _ in range(6):
        G = _task_grads(net, fns, x, ys)
        bufs = G.clone() if bufs is None else mu * bufs + G  # torch SGD: b <- mu b + g, b_1 = g
        before = _shared(net)
        tr.step(x, ys)
        torch.testing.assert_close(rec.last_delta, -lr * bufs, rtol=1e-10, atol=1e-16)
        torch.testing.assert_close(rec.last_delta.sum(0), _shared(net) - before, rtol=1e-10, atol=1e-15)
    assert rec.momentum == mu  # taken from the optimizer


def test_sgd_nesterov_dampening_and_follow():
    G1, G2 = T([[1.0, -2.0]]), T([[3.0, 0.5]])
    rec = AURecorder({"w": (0, 2)}, 1, "sgd", lr=0.1, momentum=0.5, dampening=0.2, nesterov=True)
    rec.update(G1)  # b = g1; step g1 + mu b
    torch.testing.assert_close(rec.last_delta, -0.1 * (G1 + 0.5 * G1))
    rec.update(G2)  # b = mu g1 + (1 - d) g2
    b = 0.5 * G1 + 0.8 * G2
    torch.testing.assert_close(rec.last_delta, -0.1 * (G2 + 0.5 * b))
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    other = AURecorder({"w": (0, 2)}, 1, "sgd", lr=1.0)
    other.follow(torch.optim.SGD([p], lr=0.3, momentum=0.7, dampening=0.1, nesterov=False))
    assert (other.lr, other.momentum, other.dampening, other.nesterov) == (0.3, 0.7, 0.1, False)


def test_adatask_pcgrad_au_uses_projected_gradients():
    net, fns, x, ys = _setup()
    lr, K = 0.01, 3
    rec = AURecorder.for_params(list(net.encoder.named_parameters()), K, "adatask", lr=lr)
    tr = MultiTaskTrainer(net, fns, "adatask+pcgrad", lr=lr, recorder=rec, seed=3)
    G = _task_grads(net, fns, x, ys)
    gen = torch.Generator()
    gen.set_state(tr.generator.get_state())
    P = pcgrad_project(G, gen)  # the projection the optimizer will draw
    assert (P - G).abs().max() > 1e-3  # the tasks do conflict
    tr.step(x, ys)
    opt = tr.optimizer
    b1, b2 = opt.param_groups[0]["betas"]
    torch.testing.assert_close(_flat_state(opt, "exp_avg_sq"), (1 - b2) * P * P, rtol=1e-12, atol=0)
    u = ((1 - b1) * P / (1 - b1)) / (((1 - b2) * P * P).sqrt() / (1 - b2) ** 0.5 + 1e-8)
    torch.testing.assert_close(rec.last_delta, -lr * u, rtol=1e-10, atol=1e-16)
    # the recorder's first moments come from the projected gradients
    torch.testing.assert_close(opt.last_grads, P, rtol=0, atol=0)
    assert (rec.last_delta + lr * torch.sign(G)).abs().max() > 1e-3  # not AdaTask on the raw gradients


@pytest.mark.parametrize("method,options", [("pcgrad", {}), ("mgda", {}), ("cagrad", {}), ("mgda", {"ub": True})])
def test_gradient_methods_au_splits_the_combined_update(method, options):
    """Adam on PCGrad / MGDA / CAGrad: the recorded parts sum to the update the optimizer applied, and they
    are the combination's parts (not the raw task gradients, which sum to another update)."""
    net, fns, x, ys = _setup()
    lr, K = 0.01, 3
    rec = AURecorder.for_params(list(net.encoder.named_parameters()), K, "adam", lr=lr)
    tr = MultiTaskTrainer(net, fns, method, lr=lr, recorder=rec, seed=3, options=options)
    plain = MultiTaskTrainer(_setup()[0], fns, method, lr=lr, seed=3, options=options)  # recording: same steps
    for _ in range(4):
        G = _task_grads(net, fns, x, ys)
        before = _shared(net)
        tr.step(x, ys)
        plain.step(x, ys)
        torch.testing.assert_close(rec.last_delta.sum(0), _shared(net) - before, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(_shared(net), _shared(plain.model), rtol=0, atol=0)
    raw = AURecorder.for_params(list(net.encoder.named_parameters()), K, "adam", lr=lr)
    raw.update(G)  # one Adam step on the raw rows: not the combined direction's split
    assert (raw.last_delta - rec.last_delta).abs().max() > 1e-6
