"""CTrL-style streams from the shipped data (skipped where a data package is missing)."""
from __future__ import annotations

import pytest
import torch

from taskshare.data import ctrl
from taskshare.data.datasets import cap_stratified
from taskshare.errors import ConfigError, DataError

SMALL = dict(n_large=100, n_small=25)


@pytest.fixture(scope="module")
def streams():
    try:
        built = {name: fn(seed=3, val_fraction=0.2, **({"n_tasks": 6, "n_large": 50, "n_small": 10}
                                                       if name == "ctrl-s-long" else
                                                       {**SMALL, "n_tiny": 10} if name == "ctrl-s-in" else SMALL))
                 for name, _, fn, _, _ in ctrl.CTRL_BENCHMARKS}
    except DataError as e:
        pytest.skip(f"data not installed: {e}")
    return built


def rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r.numpy().tobytes()) for r in x.flatten(1)}


def test_every_stream_is_well_formed(streams):
    assert [len(streams[n]) for n in ("ctrl-s-minus", "ctrl-s-plus", "ctrl-s-in", "ctrl-s-out", "ctrl-s-pl",
                                      "ctrl-s-long")] == [6, 6, 6, 6, 5, 6]
    for name, stream in streams.items():
        assert stream.name == name and len(set(stream.task_names)) == len(stream)
        for task in stream:
            assert task.input_shape == (3, 28, 28) and task.num_classes == 5
            x, y = next(task.train.batches(8))
            assert x.shape[1:] == (3, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
            assert set(task.train.y.tolist()) == set(range(5)) and len(task.test) > 0
            assert rows(task.train.x).isdisjoint(rows(task.val.x))


def test_sizes_and_validation_share(streams):
    minus = streams["ctrl-s-minus"]
    assert [len(t.train) for t in minus] == [100, 25, 25, 25, 25, 25]
    assert len(minus[0].val) == 5 * round(20 * 0.2 / 0.8) and len(minus[1].val) == 5  # at least one per class
    assert [len(t.train) for t in streams["ctrl-s-plus"]] == [25, 25, 25, 25, 25, 100]
    assert [len(t.train) for t in streams["ctrl-s-pl"]] == [25, 25, 25, 25, 100]
    assert len(streams["ctrl-s-in"][5].train) == 10
    long = streams["ctrl-s-long"]
    assert len(long[0].train) == 50 and all(len(t.train) in (10, 50) for t in long)


def test_revisited_task_has_the_same_classes_and_fresh_samples(streams):
    for name in ("ctrl-s-minus", "ctrl-s-plus", "ctrl-s-in", "ctrl-s-out"):
        first, last = streams[name][0], streams[name][5]
        assert sorted(first.classes) == sorted(last.classes)
        assert rows(first.train.x).isdisjoint(rows(last.train.x))
    digits, mnist = streams["ctrl-s-minus"][3], streams["ctrl-s-minus"][0]
    assert set(digits.classes).isdisjoint(mnist.classes)


def test_s_in_shifts_the_input_and_s_out_the_labels(streams):
    first, last = streams["ctrl-s-in"][0], streams["ctrl-s-in"][5]
    a, b = first.test.take(torch.arange(4))[0], last.test.take(torch.arange(4))[0]
    assert torch.equal(first.test.x[:4], last.test.x[:4]) and not torch.allclose(a, b)
    first, last = streams["ctrl-s-out"][0], streams["ctrl-s-out"][5]
    assert torch.equal(first.test.x, last.test.x)
    perm = torch.full((5,), -1)
    perm[first.test.y] = last.test.y
    assert sorted(perm.tolist()) == list(range(5)) and all(perm[k] != k for k in range(5))
    assert [last.classes[int(perm[k])] for k in range(5)] == first.classes


def test_bad_options():
    with pytest.raises(ConfigError, match="benchmark.n_small"):
        ctrl.build_ctrl_s_minus(seed=0, val_fraction=0.1, n_small=2)
    with pytest.raises(ConfigError, match="benchmark.p_large"):
        ctrl.build_ctrl_s_long(seed=0, val_fraction=0.1, p_large=2)


def test_max_eval_caps_test_splits_with_a_fixed_stratified_subset(streams):
    build = dict((name, fn) for name, _, fn, _, _ in ctrl.CTRL_BENCHMARKS)["ctrl-s-minus"]
    full = streams["ctrl-s-minus"]
    capped = build(seed=3, val_fraction=0.2, max_eval=100, **SMALL)
    other_seed = build(seed=4, val_fraction=0.2, max_eval=100, **SMALL)
    for t, c, o in zip(full, capped, other_seed):
        assert len(c.test) == 100 and len(t.test) > 100
        assert torch.equal(c.train.y, t.train.y) and torch.equal(c.val.y, t.val.y)  # only test is capped
        share = torch.bincount(t.test.y, minlength=5) / len(t.test)  # class-stratified: the full split's shares
        assert (torch.bincount(c.test.y, minlength=5) - 100 * share).abs().max() <= 1
        assert rows(c.test.x) <= rows(t.test.x)
        # the subset is fixed (seed 0), not drawn from the run seed
        assert torch.equal(c.test.x, cap_stratified(t.test, 100, 0).x)
    assert len(other_seed.tasks[0].test) == 100
    with pytest.raises(ConfigError, match="benchmark.max_eval"):
        build(seed=3, val_fraction=0.2, max_eval=-1, **SMALL)
