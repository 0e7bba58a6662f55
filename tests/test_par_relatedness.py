"""PAR relatedness (spec §2, §7, §10.1) and routing (spec §3, §10.2)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from taskshare.data import Stream, Task, TensorDataset
from taskshare.errors import ConfigError, DataError
from taskshare.methods.par.relatedness import (divergence, make_extractor, prototypes, relatedness_matrix,
                                               relatedness_report, similarity, task_relatedness)
from taskshare.methods.par.routing import expert_scores, route

D, C, N = 512, 10, 50


def gaussians(means: torch.Tensor, gen: torch.Generator, n: int = N, shift: float = 0.0):
    y = torch.arange(len(means)).repeat_interleave(n)
    return means[y] + shift + torch.randn(len(y), means.shape[1], generator=gen), y


@pytest.fixture(scope="module")
def world():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(C, D, generator=gen)
    old = gaussians(means, gen)
    return gen, means, old, prototypes(*old)


def tier(s: float) -> str:
    return route([s], n_train=1000, expert_max_train=[1000])[0]


def test_same_distribution_is_about_0_2_and_reused(world):
    gen, means, _, protos = world
    s, d = task_relatedness(*gaussians(means, gen), protos)
    assert s == pytest.approx(0.20, abs=0.03)  # the documented C/n bias: D ~ 10/50
    assert tier(s) == "reuse"


def test_unrelated_is_above_0_9_and_searched(world):
    gen, _, _, protos = world
    s, _ = task_relatedness(*gaussians(torch.randn(C, D, generator=gen), gen), protos)
    assert s > 0.9
    assert tier(s) == "allocate-search"


def test_monotone_in_the_mean_shift(world):
    gen, means, _, protos = world
    values = [task_relatedness(*gaussians(means, gen, shift=shift), protos)[0]
              for shift in (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_identical_samples_zero_and_the_official_quirk(world):
    _, _, old, protos = world
    assert task_relatedness(*old, protos) == (0.0, 0.0)
    s, d = task_relatedness(*old, protos, zero_is_unrelated=True)
    assert (s, d) == (1.0, 0.0)
    assert tier(s) == "allocate-search"  # official: identical data is searched


def test_leave_one_out_removes_the_bias(world):
    gen, means, _, protos = world
    new = gaussians(means, gen)
    biased, _ = task_relatedness(*new, protos)
    corrected, _ = task_relatedness(*new, protos, loo=True)
    assert corrected < 0.05 < 0.15 < biased
    # the closed form rho * n/(n-1) equals explicit leave-one-out prototypes (checked on a few samples)
    f, y = new
    d_loo, per_class = divergence(f, y, protos, loo=True)
    own = prototypes(f, y)
    for i in (0, 7, 123):
        mask = y == y[i]
        mask[i] = False
        rho = (f[i].double() - f[mask].double().mean(0)).norm()
        nu = torch.cdist(f[i:i + 1].double(), protos).min()
        assert float(rho) == pytest.approx(float((f[i].double() - own[y[i]]).norm()) * N / (N - 1), rel=1e-9)
        assert math.isfinite(float(torch.log(nu / rho)))
    assert d_loo == pytest.approx(float(per_class.clamp_min(0).sum()), rel=1e-6)


def test_similarity_formula_and_sum_over_classes():
    assert similarity(0.1) == pytest.approx(0.1)               # min(1 - e^-0.2, 0.1) = 0.1
    assert similarity(2.0) == pytest.approx(1 - math.exp(-4))
    assert similarity(0.0) == 0.0 and similarity(0.0, zero_is_unrelated=True) == 1.0
    # D sums max(D_c, 0) over classes: class 0 far from p, class 1 on p's prototype
    f = torch.tensor([[10.0, 0.0], [10.0, 2.0], [0.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    d, per_class = divergence(f, y, torch.tensor([[0.0, 1.0]]))
    assert per_class[1] == pytest.approx(0.0) and per_class[0] > 0
    assert d == pytest.approx(float(per_class[0]))


def test_loo_needs_two_samples_per_class():
    f, y = torch.randn(3, 4), torch.tensor([0, 0, 1])
    with pytest.raises(DataError, match="2 samples per class"):
        divergence(f, y, torch.zeros(1, 4), loo=True)


def test_matrix_and_report(tmp_path):
    gen = torch.Generator().manual_seed(1)

    def task(name, means):
        x, y = gaussians(means, gen, n=20)
        ds = TensorDataset(x.view(-1, 1, 4, 4), y)
        return Task(name, ds, ds, ds, 3, (1, 4, 4))

    a = torch.randn(3, 16, generator=gen) * 3
    stream = Stream("toy", [task("a", a), task("a2", a), task("b", torch.randn(3, 16, generator=gen) * 3)])
    text = relatedness_report(stream, tmp_path, extractor="raw")
    assert "a2" in text and (tmp_path / "relatedness.png").stat().st_size > 1000
    info = json.loads((tmp_path / "relatedness.json").read_text())
    m = torch.tensor(info["matrix"])
    assert m.shape == (3, 3) and torch.all(m.diagonal() == 0)
    assert m[1, 0] < 0.5 < m[2, 0]
    feats = [(t.val.x.flatten(1), t.val.y) for t in stream.tasks]
    assert torch.allclose(relatedness_matrix(feats), m)
    with pytest.raises(ConfigError, match="trained PAR experts"):
        relatedness_report(stream, tmp_path, extractor="expert")


def test_make_extractor_names():
    fn, name = make_extractor("raw", (1, 4, 4))
    assert name == "raw" and fn(torch.ones(2, 1, 4, 4)).shape == (2, 16)
    with pytest.raises(ConfigError, match="unknown relatedness extractor"):
        make_extractor("resnet", (1, 4, 4))


# ---------------------------------------------------------------------------------------------- routing
def test_routing_table_at_the_thresholds():
    eps = 1e-9
    kw = dict(n_train=100, expert_max_train=[100])
    assert route([], **kw) == ("allocate-search", None)  # task 0 always searches
    assert route([0.5], **kw) == ("reuse", 0)
    assert route([0.5 + eps], **kw) == ("allocate", 0)
    assert route([0.75], **kw) == ("allocate", 0)
    assert route([0.75 + eps], **kw) == ("allocate-search", 0)
    custom = dict(kw, reuse_threshold=0.2, cell_threshold=0.3)
    assert route([0.25], **custom)[0] == "allocate" and route([0.35], **custom)[0] == "allocate-search"
    # argmin over experts, the first on ties
    assert route([0.9, 0.3, 0.3], n_train=100, expert_max_train=[1, 1, 1]) == ("reuse", 1)
    assert route([0.9, 0.6], n_train=100, expert_max_train=[1, 1]) == ("allocate", 1)


def test_experts_are_scored_by_the_mean_over_their_tasks():
    s = {"a": 0.1, "b": 0.9, "c": 0.4}
    experts = [["a", "b"], ["c"]]
    assert expert_scores(s, experts) == pytest.approx([0.5, 0.4])
    assert expert_scores(s, experts, "max") == pytest.approx([0.9, 0.4])
    assert expert_scores(s, experts, "min") == pytest.approx([0.1, 0.4])
    # the mean picks expert 1 although task a alone (on expert 0) is the closest
    assert route(expert_scores(s, experts), n_train=100, expert_max_train=[100, 100]) == ("reuse", 1)
    with pytest.raises(ConfigError, match="expert score"):
        expert_scores(s, experts, "median")


def test_few_shot_override():
    scores = [0.95, 0.9]  # both would search
    assert route(scores, n_train=25, expert_max_train=[5000, 100])[0] == "allocate-search"  # off by default
    kw = dict(few_shot_max=25, few_shot_ratio=10)
    # the best-scored expert (1) is too small (100 < 250): the next one with >= 10 N is reused
    assert route(scores, n_train=25, expert_max_train=[5000, 100], **kw) == ("reuse", 0)
    assert route(scores, n_train=25, expert_max_train=[5000, 250], **kw) == ("reuse", 1)
    assert route(scores, n_train=26, expert_max_train=[5000, 5000], **kw) == ("allocate-search", 1)
    assert route(scores, n_train=25, expert_max_train=[200, 100], **kw) == ("allocate-search", 1)
