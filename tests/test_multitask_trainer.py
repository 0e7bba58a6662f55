"""MultiTaskTrainer: every method steps; the gradient methods write exactly the aggregator's output."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from taskshare.errors import ConfigError
from taskshare.methods.multioutput import (
    METHOD_OPTIONS, METHODS, AdaTaskAdam, MultiOutputNet, MultiTaskTrainer, detect_sharing, mgda_ub_weights,
    pcgrad, per_task_gradients,
)

TASKS = ("a", "b", "c")


def mse(o, t):
    return ((o[:, 0] - t) ** 2).mean()


def _net(seed: int = 0) -> MultiOutputNet:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
    return MultiOutputNet(enc, {t: nn.Linear(6, 1) for t in TASKS}).double()


def _batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 4, dtype=torch.float64, generator=g)
    y = torch.tanh(x @ torch.randn(4, 3, dtype=torch.float64, generator=g))
    return x, {t: y[:, k] * (k + 1) for k, t in enumerate(TASKS)}


def _flat(ps):
    return torch.cat([p.detach().reshape(-1) for p in ps])


def test_registry_names():
    assert list(METHODS) == ["ew", "uw", "dwa", "gradnorm", "pcgrad", "mgda", "cagrad", "adatask", "adatask+pcgrad"]
    assert set(METHOD_OPTIONS) == set(METHODS)
    assert all(isinstance(v, str) and v for v in METHODS.values())


@pytest.mark.parametrize("method,options", [(m, None) for m in METHODS] + [("mgda", {"ub": True})])
def test_every_method_lowers_the_losses(method, options):
    net = _net()
    tr = MultiTaskTrainer(net, {t: mse for t in TASKS}, method, lr=0.01, options=options)
    x, ys = _batch()
    first = tr.step(x, ys)
    for epoch in range(3):
        for _ in range(10):
            last = tr.step(x, ys)
        tr.end_epoch()
    assert set(last) == set(TASKS)
    assert sum(last.values()) < sum(first.values())
    assert tr.sharing.shared == ("encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias")


def test_adatask_trainer_equals_the_optimizer_used_by_hand():
    x, ys = _batch()
    net1, net2 = _net(), _net()
    tr = MultiTaskTrainer(net1, {t: mse for t in TASKS}, "adatask", lr=0.01)
    shared, heads = list(net2.encoder.parameters()), list(net2.heads.parameters())
    opt = AdaTaskAdam(shared, heads, 3, lr=0.01)
    for _ in range(5):
        tr.step(x, ys)
        out = net2(x)
        L = [mse(out[t], ys[t]) for t in TASKS]
        G = per_task_gradients(L, shared, "loop", retain_graph=True)
        opt.zero_grad()
        torch.stack(L).sum().backward(inputs=heads)
        opt.step(G)
    torch.testing.assert_close(_flat(net1.parameters()), _flat(net2.parameters()), rtol=0, atol=1e-14)


def test_pcgrad_step_applies_the_aggregate_to_shared_and_own_gradients_to_heads():
    x, ys = _batch()
    net = _net()
    ref = copy.deepcopy(net)
    tr = MultiTaskTrainer(net, {t: mse for t in TASKS}, "pcgrad", optimizer="sgd", lr=1.0, seed=7)
    tr.step(x, ys)
    out = ref(x)
    L = [mse(out[t], ys[t]) for t in TASKS]
    shared, heads = list(ref.encoder.parameters()), list(ref.heads.parameters())
    G = per_task_gradients(L, shared, retain_graph=True)
    d = pcgrad(G, torch.Generator().manual_seed(7))
    head_grads = torch.autograd.grad(torch.stack(L).sum(), heads)
    torch.testing.assert_close(_flat(net.encoder.parameters()), _flat(shared) - d, rtol=0, atol=1e-14)
    torch.testing.assert_close(_flat(net.heads.parameters()), _flat(heads) - _flat(head_grads), rtol=0, atol=1e-14)


def test_mgda_ub_uses_representation_gradients():
    x, ys = _batch()
    net = _net()
    ref = copy.deepcopy(net)
    tr = MultiTaskTrainer(net, {t: mse for t in TASKS}, "mgda", optimizer="sgd", lr=1.0, options={"ub": True})
    tr.step(x, ys)
    z = ref.encode(x)
    out = ref.decode(z)
    L = [mse(out[t], ys[t]) for t in TASKS]
    a = mgda_ub_weights(per_task_gradients(L, [z], retain_graph=True))
    assert tr.last_weights == pytest.approx(a.tolist(), abs=1e-15)
    assert sum(tr.last_weights) == pytest.approx(1.0) and min(tr.last_weights) >= 0
    shared = list(ref.encoder.parameters())
    g = torch.autograd.grad((a * torch.stack(L)).sum(), shared)
    torch.testing.assert_close(_flat(net.encoder.parameters()), _flat(shared) - _flat(g), rtol=0, atol=1e-14)


def test_weighting_methods_report_weights():
    x, ys = _batch()
    gn = MultiTaskTrainer(_net(), {t: mse for t in TASKS}, "gradnorm", lr=0.01)
    gn.step(x, ys)
    assert gn.last_weights == [1.0, 1.0, 1.0]
    gn.step(x, ys)
    assert sum(gn.last_weights) == pytest.approx(3.0) and gn.last_weights != [1.0, 1.0, 1.0]
    dwa = MultiTaskTrainer(_net(), {t: mse for t in TASKS}, "dwa", lr=0.01)
    for _ in range(2):  # the first two epochs use w = 1
        dwa.step(x, ys)
        assert dwa.last_weights == [1.0, 1.0, 1.0]
        dwa.end_epoch()
    dwa.step(x, ys)
    assert sum(dwa.last_weights) == pytest.approx(3.0) and dwa.last_weights != [1.0, 1.0, 1.0]
    uw = MultiTaskTrainer(_net(), {t: mse for t in TASKS}, "uw", lr=0.1, options={"kinds": "classification"})
    uw.step(x, ys)
    uw.step(x, ys)
    assert uw.last_weights != [1.0, 1.0, 1.0]  # exp(-s) moved with the learned log-variances


def test_sharing_override_and_unused_parameters():
    x, ys = _batch()
    net = _net()
    net.extra = nn.Parameter(torch.zeros(3, dtype=torch.float64))  # reached by no task
    tr = MultiTaskTrainer(net, {t: mse for t in TASKS}, "adatask", lr=0.01)
    s = tr.prepare(x, ys)
    assert s.unused == ("extra",)
    assert all(p is not net.extra for g in tr.optimizer.param_groups for p in g["params"])
    own = detect_sharing(net, shared=["encoder.0.weight", "encoder.0.bias"],
                         task_specific={"a": ["encoder.2.weight", "encoder.2.bias", "heads.a.weight", "heads.a.bias"],
                                        "b": ["heads.b.weight", "heads.b.bias"],
                                        "c": ["heads.c.weight", "heads.c.bias", "extra"]}, tasks=TASKS)
    tr2 = MultiTaskTrainer(net, {t: mse for t in TASKS}, "adatask", lr=0.01, sharing=own)
    tr2.step(x, ys)
    assert len(tr2.optimizer.state[net.encoder[0].weight]["exp_avg"]) == 3
    assert tr2.optimizer.state[net.encoder[2].weight]["exp_avg"].shape == net.encoder[2].weight.shape


def test_state_dict_resume_equals_uninterrupted():
    x, ys = _batch()
    net = _net()
    tr = MultiTaskTrainer(net, {t: mse for t in TASKS}, "adatask+pcgrad", lr=0.01)
    for _ in range(3):
        tr.step(x, ys)
    net2 = copy.deepcopy(net)
    tr2 = MultiTaskTrainer(net2, {t: mse for t in TASKS}, "adatask+pcgrad", lr=0.01)
    tr2.prepare(x, ys)
    tr2.load_state_dict(copy.deepcopy(tr.state_dict()))
    tr2.generator.set_state(tr.generator.get_state())
    for _ in range(3):
        tr.step(x, ys)
        tr2.step(x, ys)
    torch.testing.assert_close(_flat(net.parameters()), _flat(net2.parameters()), rtol=0, atol=0)


def test_config_errors():
    net = _net()
    fns = {t: mse for t in TASKS}
    with pytest.raises(ConfigError, match="unknown multi-task method 'nash'"):
        MultiTaskTrainer(net, fns, "nash")
    with pytest.raises(ConfigError, match="unknown option 'c' for method pcgrad"):
        MultiTaskTrainer(net, fns, "pcgrad", options={"c": 1})
    with pytest.raises(ConfigError, match="AdaTask variant 'sgd'"):
        MultiTaskTrainer(net, fns, "adatask", optimizer="sgd")
    with pytest.raises(ConfigError, match="unknown optimizer"):
        MultiTaskTrainer(net, fns, "ew", optimizer="lion")
    with pytest.raises(ConfigError, match="one loss function per head"):
        MultiTaskTrainer(net, {"a": mse}, "ew")
    x, ys = _batch()
    tr = MultiTaskTrainer(net, {**fns, "a": lambda o, t: (o[:, 0] - t) ** 2}, "ew")
    with pytest.raises(ConfigError, match="return a scalar"):
        tr.step(x, ys)
    alone = MultiOutputNet(nn.Identity(), {t: nn.Linear(4, 1) for t in TASKS}).double()
    with pytest.raises(ConfigError, match="needs shared parameters"):
        MultiTaskTrainer(alone, fns, "cagrad").step(x, ys)
    with pytest.raises(ConfigError, match="before the first step"):
        MultiTaskTrainer(net, fns, "ew").state_dict()
