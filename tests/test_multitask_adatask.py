"""AdaTask optimizers: the faithfulness list of the spec (section 8), all in float64."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from taskshare.errors import ConfigError
from taskshare.methods.multioutput.adatask import AdaTaskAdagrad, AdaTaskAdam, AdaTaskRMSprop, make_adatask
from taskshare.methods.multioutput.aggregators import pcgrad_project
from taskshare.methods.multioutput.gradients import per_task_gradients


def _net(K: int, seed: int = 0):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh()).double()
    heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(K)).double()
    return enc, heads


def _data(K: int, n: int = 16, y_scale: float = 1.0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, dtype=torch.float64, generator=g)
    return x, y_scale * torch.randn(n, K, dtype=torch.float64, generator=g)


def _losses(enc, heads, x, y, scales=None):
    z = enc(x)
    out = [((h(z)[:, 0] - y[:, k]) ** 2).mean() for k, h in enumerate(heads)]
    return [o * scales[k] for k, o in enumerate(out)] if scales is not None else out


def _adatask_step(opt, enc, heads, x, y, scales=None):
    L = _losses(enc, heads, x, y, scales)
    G = per_task_gradients(L, list(enc.parameters()), "loop", retain_graph=True)
    opt.zero_grad()
    torch.stack(L).sum().backward(inputs=list(heads.parameters()))
    opt.step(G)


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


@pytest.mark.parametrize("variant,ref", [
    ("adam", lambda ps: torch.optim.Adam(ps, lr=0.01)),
    ("adam_wd", lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1)),
    ("adam_decoupled", lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    # eps = 1e-3 makes its placement visible: sqrt(G) + eps, as torch
    ("rmsprop", lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-3, centered=False, momentum=0)),
    ("adagrad", lambda ps: torch.optim.Adagrad(ps, lr=0.05, eps=1e-3, lr_decay=0, initial_accumulator_value=0)),
])
def test_one_task_equals_torch_optimizer_over_100_steps(variant, ref):
    make = {
        "adam": lambda s, h: AdaTaskAdam(s, h, 1, lr=0.01),
        "adam_wd": lambda s, h: AdaTaskAdam(s, h, 1, lr=0.01, weight_decay=0.1),
        "adam_decoupled": lambda s, h: AdaTaskAdam(s, h, 1, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        "rmsprop": lambda s, h: AdaTaskRMSprop(s, h, 1, lr=0.01, alpha=0.9, eps=1e-3),
        "adagrad": lambda s, h: AdaTaskAdagrad(s, h, 1, lr=0.05, eps=1e-3),
    }[variant]
    enc1, heads1 = _net(1)
    enc2, heads2 = copy.deepcopy(enc1), copy.deepcopy(heads1)
    x, y = _data(1)
    opt1 = make(list(enc1.parameters()), list(heads1.parameters()))
    opt2 = ref(list(enc2.parameters()) + list(heads2.parameters()))
    for _ in range(100):
        _adatask_step(opt1, enc1, heads1, x, y)
        opt2.zero_grad()
        _losses(enc2, heads2, x, y)[0].backward()
        opt2.step()
    assert (_flat(enc1) - _flat(enc2)).abs().max() <= 1e-10
    assert (_flat(heads1) - _flat(heads2)).abs().max() <= 1e-10
    assert (_flat(enc1) - _flat(_net(1)[0])).abs().max() > 1e-2  # it did train


def test_k_identical_tasks_give_k_times_adam_and_heads_get_adam_on_the_sum():
    K = 3
    g = torch.Generator().manual_seed(5)
    p_sh = nn.Parameter(torch.randn(4, 3, dtype=torch.float64, generator=g))
    p_hd = nn.Parameter(torch.randn(3, dtype=torch.float64, generator=g))
    q_sh, q_hd = nn.Parameter(p_sh.detach().clone()), nn.Parameter(p_hd.detach().clone())
    opt = AdaTaskAdam([p_sh], [p_hd], K, lr=0.01)
    ref_sh, ref_hd = torch.optim.Adam([q_sh], lr=0.01), torch.optim.Adam([q_hd], lr=0.01)
    for _ in range(20):
        gs = torch.randn(12, dtype=torch.float64, generator=g)
        gh = [torch.randn(3, dtype=torch.float64, generator=g) for _ in range(K)]
        before_sh, before_hd = p_sh.detach().clone(), p_hd.detach().clone()
        ref_before = q_sh.detach().clone()
        p_hd.grad = sum(gh)
        opt.step(gs.repeat(K, 1))
        q_sh.grad, q_hd.grad = gs.view(4, 3).clone(), sum(gh)
        ref_sh.step()
        ref_hd.step()
        torch.testing.assert_close(p_sh.detach() - before_sh, K * (q_sh.detach() - ref_before), rtol=0, atol=1e-15)
        q_sh.data.copy_(p_sh.detach())  # keep the two shared parameters equal for the next step
        torch.testing.assert_close(p_hd.detach() - before_hd, q_hd.detach() - before_hd, rtol=0, atol=1e-15)


def test_scaling_one_loss_by_1000_leaves_shared_updates_unchanged():
    x, y = _data(2, y_scale=100.0)  # invariance holds up to eps / |g|: keep every |g| >> eps
    runs = {}
    for name, scales in (("base", [1.0, 1.0]), ("scaled", [1000.0, 1.0])):
        enc, heads = _net(2)
        opt = AdaTaskAdam(list(enc.parameters()), list(heads.parameters()), 2, lr=0.01)
        start = _flat(enc)
        for _ in range(10):
            _adatask_step(opt, enc, heads, x, y, scales)
        runs[name] = _flat(enc) - start
    rel = (runs["scaled"] - runs["base"]).norm() / runs["base"].norm()
    assert rel <= 1e-6
    # plain Adam on the summed gradient changes by O(1)
    adam = {}
    for name, scales in (("base", [1.0, 1.0]), ("scaled", [1000.0, 1.0])):
        enc, heads = _net(2)
        opt = torch.optim.Adam(list(enc.parameters()) + list(heads.parameters()), lr=0.01)
        start = _flat(enc)
        for _ in range(10):
            opt.zero_grad()
            torch.stack(_losses(enc, heads, x, y, scales)).sum().backward()
            opt.step()
        adam[name] = _flat(enc) - start
    assert (adam["scaled"] - adam["base"]).norm() / adam["base"].norm() > 0.1


def test_state_layout():
    K = 3
    enc, heads = _net(K)
    opt = AdaTaskAdam(list(enc.parameters()), list(heads.parameters()), K)
    x, y = _data(K)
    _adatask_step(opt, enc, heads, x, y)
    _adatask_step(opt, enc, heads, x, y)
    for p in enc.parameters():
        st = opt.state[p]
        assert st["exp_avg"].shape == (K, *p.shape) and st["exp_avg_sq"].shape == (K, *p.shape)  # 2K buffers
        assert st["step"] == 2 and st["task_step"] == [2] * K  # one step counter per parameter
    for p in heads.parameters():
        st = opt.state[p]
        assert set(st) == {"step", "exp_avg", "exp_avg_sq"}
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
    assert [g["role"] for g in opt.param_groups] == ["shared", "task"]


def test_first_step_is_sum_of_signs_and_can_ascend():
    lr = 0.01
    g = torch.Generator().manual_seed(2)
    G = torch.randn(3, 10, dtype=torch.float64, generator=g)
    p = nn.Parameter(torch.zeros(10, dtype=torch.float64))
    AdaTaskAdam([p], [], 3, lr=lr).step(G)
    torch.testing.assert_close(p.detach(), -lr * torch.sign(G).sum(0), rtol=1e-6, atol=0)
    # per-task gradients (1, 1, 1, -4) on one element: the step goes against the summed gradient (-1)
    q = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    G4 = torch.tensor([[1.0], [1.0], [1.0], [-4.0]], dtype=torch.float64)
    AdaTaskAdam([q], [], 4, lr=lr).step(G4)
    assert float(q.detach()) == pytest.approx(-2 * lr, rel=1e-6)
    assert float(q.detach()) * float(G4.sum()) > 0  # first-order increase of the joint loss: an ascent step
    r = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    adam = torch.optim.Adam([r], lr=lr)
    r.grad = G4.sum(0)
    adam.step()
    assert float(r.detach()) * float(G4.sum()) < 0  # plain Adam descends


def test_missing_gradients_skip_and_official_zero():
    lr, b1, b2 = 0.01, 0.9, 0.999
    g1a, g1b, g2 = (torch.tensor([v], dtype=torch.float64) for v in (0.5, -0.3, 2.0))
    # skip (default): task 2 does not reach the parameter on step 1
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = AdaTaskAdam([p], [], 2, lr=lr)
    opt.step([[g1a], [None]])
    st = opt.state[p]
    assert st["task_step"] == [1, 0] and float(st["exp_avg"][1].abs().sum()) == 0
    assert float(p.detach()) == pytest.approx(-lr, rel=1e-6)  # only task 1, first step: -lr sign(g1)
    # step 2: task 2 appears; its bias correction uses its own count (1): a first step -lr sign(g2)
    before = float(p.detach())
    opt.step([[g1b], [g2]])
    m1 = b1 * (1 - b1) * 0.5 + (1 - b1) * -0.3
    v1 = b2 * (1 - b2) * 0.25 + (1 - b2) * 0.09
    u1 = (m1 / (1 - b1 ** 2)) / ((v1 / (1 - b2 ** 2)) ** 0.5 + 1e-8)
    assert float(p.detach()) - before == pytest.approx(-lr * (u1 + 1.0), rel=1e-6)
    assert st["task_step"] == [2, 1] and st["step"] == 2
    # the same through a `reached` mask on the flat matrix
    p2 = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt2 = AdaTaskAdam([p2], [], 2, lr=lr)
    opt2.step(torch.stack([g1a, torch.zeros(1, dtype=torch.float64)]), reached=[[True], [False]])
    opt2.step(torch.stack([g1b, g2]))
    assert float(p2.detach()) == pytest.approx(float(p.detach()), rel=1e-12)
    # official: moments advance with a zero gradient, shared counter for the bias correction
    q = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    off = AdaTaskAdam([q], [], 2, lr=lr, missing="zero")
    off.step([[g1a], [None]])
    off.step([[g1b], [g2]])
    m2 = (1 - b1) * 2.0
    v2 = (1 - b2) * 4.0
    u2 = (m2 / (1 - b1 ** 2)) / ((v2 / (1 - b2 ** 2)) ** 0.5 + 1e-8)
    assert float(q.detach()) == pytest.approx(-lr - lr * (u1 + u2), rel=1e-6)
    assert off.state[q]["task_step"] == [2, 2]


def test_weight_decay_is_added_to_each_task_gradient():
    lr, wd = 0.01, 0.5
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    G = torch.tensor([[-0.4, 0.1], [0.3, 3.0]], dtype=torch.float64)
    AdaTaskAdam([p], [], 2, lr=lr, weight_decay=wd).step(G)
    # first step: -lr sum_k sign(g_k + wd p) with g + wd p = [[0.1, -0.9], [0.8, 2.0]]
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 2 * lr, -2.0]), rtol=1e-6, atol=0,
                               check_dtype=False)
    q = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    AdaTaskAdam([q], [], 2, lr=lr, weight_decay=wd, decoupled_weight_decay=True).step(G)
    expect = torch.tensor([1.0, -2.0], dtype=torch.float64) * (1 - lr * wd) - lr * torch.sign(G).sum(0)
    torch.testing.assert_close(q.detach(), expect, rtol=1e-6, atol=0)


def test_adatask_pcgrad_on_gradients_and_on_updates():
    lr = 0.01
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    # on gradients: AdaTask fed with the PCGrad-projected rows
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    q = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    AdaTaskAdam([p], [], 2, lr=lr, pcgrad="gradients", generator=torch.Generator().manual_seed(0)).step(G)
    AdaTaskAdam([q], [], 2, lr=lr).step(pcgrad_project(G))
    torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
    # projected rows (0.5, 0.5), (0, 1): first step -lr sum sign = -lr (1, 2)
    torch.testing.assert_close(p.detach(), -lr * torch.tensor([1.0, 2.0], dtype=torch.float64), rtol=1e-6, atol=0)
    # on updates: first-step updates sign(g_k) = (1, 0), (-1, 1) are projected: (0.5, 0.5) + (0, 1)
    r = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    AdaTaskAdam([r], [], 2, lr=lr, pcgrad="updates").step(G * 7)
    torch.testing.assert_close(r.detach(), -lr * torch.tensor([0.5, 1.5], dtype=torch.float64), rtol=1e-6, atol=0)


def test_adatask_pcgrad_keeps_scale_invariance():
    x, y = _data(2, y_scale=100.0)
    runs = {}
    for scales in ((1.0, 1.0), (1000.0, 1.0)):
        enc, heads = _net(2)
        opt = AdaTaskAdam(list(enc.parameters()), list(heads.parameters()), 2, lr=0.01, pcgrad="gradients",
                          generator=torch.Generator().manual_seed(0))
        start = _flat(enc)
        for _ in range(5):
            _adatask_step(opt, enc, heads, x, y, scales)
        runs[scales] = _flat(enc) - start
    base = runs[(1.0, 1.0)]
    assert (runs[(1000.0, 1.0)] - base).norm() / base.norm() <= 1e-6


def test_state_dict_resume_equals_uninterrupted():
    x, y = _data(2)
    enc, heads = _net(2)
    opt = AdaTaskRMSprop(list(enc.parameters()), list(heads.parameters()), 2, lr=0.01)
    for _ in range(3):
        _adatask_step(opt, enc, heads, x, y)
    enc2, heads2 = copy.deepcopy(enc), copy.deepcopy(heads)
    opt2 = AdaTaskRMSprop(list(enc2.parameters()), list(heads2.parameters()), 2, lr=0.01)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(3):
        _adatask_step(opt, enc, heads, x, y)
        _adatask_step(opt2, enc2, heads2, x, y)
    torch.testing.assert_close(_flat(enc), _flat(enc2), rtol=0, atol=0)
    torch.testing.assert_close(_flat(heads), _flat(heads2), rtol=0, atol=0)


def test_variant_from_config_and_errors():
    enc, heads = _net(2)
    s, h = list(enc.parameters()), list(heads.parameters())
    assert isinstance(make_adatask("adam", s, h, 2), AdaTaskAdam)
    assert isinstance(make_adatask("rmsprop", s, h, 2, alpha=0.9), AdaTaskRMSprop)
    assert isinstance(make_adatask("adagrad", s, h, 2), AdaTaskAdagrad)
    with pytest.raises(ConfigError, match="unknown AdaTask variant 'sgd'"):
        make_adatask("sgd", s, h, 2)
    opt = make_adatask("adam", s, h, 2)
    with pytest.raises(ConfigError, match="per-task gradients"):
        opt.step()
    with pytest.raises(ConfigError, match="shape"):
        opt.step(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ConfigError, match="2 lists"):
        opt.step([[None] * len(s)])
    with pytest.raises(ConfigError, match="missing"):
        AdaTaskAdam(s, h, 2, missing="ignore")
    with pytest.raises(ConfigError, match="pcgrad"):
        AdaTaskAdam(s, h, 2, pcgrad="both")
    with pytest.raises(ConfigError, match="no parameters"):
        AdaTaskAdam([], [], 2)


# ---- the fused step (issue 14): same numbers as the previous per-parameter implementation

def _reference_step(variant, state, params, grads, group, K):
    """The previous per-parameter update (every task reaching every parameter), kept as the reference:
    ``grads[i]`` is (K, *shape) for a shared parameter, (1, *shape) for a head."""
    lr, eps = group["lr"], group["eps"]
    for p, g in zip(params, grads):
        st = state.setdefault(p, {"t": 0, "a": torch.zeros_like(g), "b": torch.zeros_like(g)})
        st["t"] += 1
        t, a, b = st["t"], st["a"], st["b"]
        if variant == "adam":
            b1, b2 = group["betas"]
            a.lerp_(g, 1 - b1)
            b.mul_(b2).addcmul_(g, g, value=1 - b2)
            u = (a / (1 - b1 ** t)) / (b.sqrt() / (1 - b2 ** t) ** 0.5 + eps)
        elif variant == "rmsprop":
            b.mul_(group["alpha"]).addcmul_(g, g, value=1 - group["alpha"])
            u = g / (b.sqrt() + eps)
        else:
            b.addcmul_(g, g, value=1.0)
            u = g / (b.sqrt() + eps)
        p.add_(u.sum(0), alpha=-lr)


@pytest.mark.parametrize("variant", ["adam", "rmsprop", "adagrad"])
def test_fused_step_equals_the_per_parameter_update_over_50_steps(variant):
    K = 3
    enc, heads = _net(K)
    enc2, heads2 = copy.deepcopy(enc), copy.deepcopy(heads)
    x, y = _data(K)
    opt = make_adatask(variant, list(enc.parameters()), list(heads.parameters()), K, lr=0.01)
    group, state = opt.param_groups[0], {}
    for _ in range(50):
        _adatask_step(opt, enc, heads, x, y)
        L = _losses(enc2, heads2, x, y)
        G = per_task_gradients(L, list(enc2.parameters()), "loop", retain_graph=True)
        hg = torch.autograd.grad(torch.stack(L).sum(), list(heads2.parameters()))
        with torch.no_grad():
            views = opt.layout.views(G)
            _reference_step(variant, state, list(enc2.parameters()) + list(heads2.parameters()),
                            views + [g.unsqueeze(0) for g in hg], group, K)
    assert (_flat(enc) - _flat(enc2)).abs().max() <= 1e-15
    assert (_flat(heads) - _flat(heads2)).abs().max() <= 1e-15
    assert (_flat(enc) - _flat(_net(K)[0])).abs().max() > 1e-2


def test_record_flag_and_state_views():
    K = 2
    enc, heads = _net(K)
    x, y = _data(K)
    opt = AdaTaskAdam(list(enc.parameters()), list(heads.parameters()), K, lr=0.01)
    _adatask_step(opt, enc, heads, x, y)
    assert opt.last_update is None and opt.last_grads is None  # nothing kept unless asked
    opt.record = True
    before = _flat(enc)
    _adatask_step(opt, enc, heads, x, y)
    assert opt.last_update.shape == (K, before.numel())
    torch.testing.assert_close(opt.last_update.sum(0), _flat(enc) - before, rtol=1e-12, atol=1e-16)
    # per-parameter state entries are views of the flat accumulators; state_dict hands out copies
    p0 = next(enc.parameters())
    assert opt.state[p0]["exp_avg_sq"].data_ptr() == opt.accumulator().data_ptr()
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg_sq"].is_contiguous()
    assert sd["state"][0]["exp_avg_sq"].data_ptr() != opt.accumulator().data_ptr()


def test_partial_reach_resume_equals_uninterrupted():
    lr, K = 0.01, 2
    g = torch.Generator().manual_seed(4)
    ps = [nn.Parameter(torch.randn(3, dtype=torch.float64, generator=g)) for _ in range(2)]
    qs = [nn.Parameter(p.detach().clone()) for p in ps]
    Gs = [torch.randn(K, 6, dtype=torch.float64, generator=g) for _ in range(6)]
    reach = [[[True, True], [True, False]], None, [[False, True], [True, True]], None, None, None]
    opt = AdaTaskAdam(ps, [], K, lr=lr)
    for G, r in zip(Gs[:3], reach[:3]):
        opt.step(G, r)
    opt2 = AdaTaskAdam(qs, [], K, lr=lr)
    with torch.no_grad():
        for p, q in zip(ps, qs):
            q.copy_(p)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.state[qs[1]]["task_step"] == [3, 2] and opt2.state[qs[0]]["task_step"] == [2, 3]
    for G, r in zip(Gs[3:], reach[3:]):
        opt.step(G, r)
        opt2.step(G, r)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
