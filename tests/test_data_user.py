"""User data at a given path: image folders and CIFAR-100 pickles (synthetic files written here)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from taskshare.data import build_benchmark
from taskshare.data.user import CIFAR100_MEAN, CIFAR100_STD, cifar100_stream, imagefolder_task
from taskshare.errors import ConfigError, DataError

COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def _write_folder(root, per_class: int = 10, size=(5, 6), ext: str = ".png") -> None:
    """root/<class>/<i>.png: every image filled with its class colour, pixel (0, 0) set to its index."""
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.new("RGB", (size[1], size[0]), color)
            img.putpixel((0, 0), (i, i, i))  # keeps images distinct
            img.save(root / name / f"{i}{ext}")
    (root / "cat" / "notes.txt").write_text("not an image")


def _label_of(x: torch.Tensor) -> list[int]:
    """Class index from the colour of pixel (1, 1) of uint8 (N, 3, H, W) images."""
    names = list(COLORS)
    return [names.index(next(n for n, c in COLORS.items() if tuple(px) == c)) for px in x[:, :, 1, 1].tolist()]


def test_imagefolder_carves_fixed_stratified_test_split(tmp_path):
    _write_folder(tmp_path / "animals")
    task = imagefolder_task(tmp_path / "animals", val_fraction=0.25, seed=3)
    assert task.name == "animals" and task.classes == ["cat", "dog", "emu"] and task.num_classes == 3
    assert task.input_shape == (3, 5, 6)
    assert len(task.test) == 6 and torch.bincount(task.test.y).tolist() == [2, 2, 2]
    assert len(task.train) + len(task.val) == 24 and len(task.val) == 6
    for split in (task.train, task.val, task.test):
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (3, 5, 6)
        assert _label_of(split.x) == split.y.tolist()  # labels follow the folder names
    xb, yb = next(task.test.batches(4))
    assert xb.dtype == torch.float32 and xb.shape == (4, 3, 5, 6) and float(xb.max()) == 1.0
    # the test split is fixed (seed 0) whatever the run seed; validation follows the seed
    other = imagefolder_task(tmp_path / "animals", val_fraction=0.25, seed=4)
    assert torch.equal(other.test.x, task.test.x)
    assert not torch.equal(other.val.x, task.val.x)
    assert torch.equal(imagefolder_task(tmp_path / "animals", val_fraction=0.25, seed=3).val.x, task.val.x)


def test_imagefolder_train_test_layout_grayscale_and_resize(tmp_path):
    _write_folder(tmp_path / "d" / "train", per_class=4)
    _write_folder(tmp_path / "d" / "test", per_class=2, ext=".jpg")
    task = imagefolder_task(tmp_path / "d", name="mine", grayscale=True, image_size=8, val_fraction=0.0)
    assert task.name == "mine" and task.input_shape == (1, 8, 8)
    assert len(task.train) == 12 and len(task.val) == 0 and len(task.test) == 6
    assert task.train.x.shape == (12, 1, 8, 8)
    assert torch.bincount(task.test.y).tolist() == [2, 2, 2]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        imagefolder_task(tmp_path / "missing")
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(DataError, match="at least 2 classes"):
        imagefolder_task(tmp_path / "one")
    _write_folder(tmp_path / "mixed", per_class=3)
    Image.new("RGB", (9, 9), (255, 0, 0)).save(tmp_path / "mixed" / "dog" / "big.png")
    with pytest.raises(DataError, match=r"big\.png is 9x9 .*pass image_size") as info:
        imagefolder_task(tmp_path / "mixed")
    assert "\n" not in str(info.value)
    assert imagefolder_task(tmp_path / "mixed", image_size=(5, 6)).input_shape == (3, 5, 6)
    (tmp_path / "mixed" / "emu" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        imagefolder_task(tmp_path / "mixed", image_size=4)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no"):
        imagefolder_task(tmp_path / "empty")


def test_imagefolder_through_build_benchmark(tmp_path):
    _write_folder(tmp_path / "a", per_class=5)
    _write_folder(tmp_path / "b", per_class=5, size=(7, 7))
    stream = build_benchmark(f"imagefolder:{tmp_path / 'a'},{tmp_path / 'b'}", seed=0, options={"image_size": 6})
    assert stream.task_names == ["a", "b"] and all(t.input_shape == (3, 6, 6) for t in stream)
    with pytest.raises(ConfigError, match=r"unknown option benchmark.n_tasks: valid options are benchmark.grayscale, benchmark.image_size, benchmark.val_fraction"):
        build_benchmark(f"imagefolder:{tmp_path / 'a'}", options={"n_tasks": 2})


# ---------------------------------------------------------------------------------------- CIFAR-100
def _write_cifar(root, train_per_class: int = 4, test_per_class: int = 1, *, meta: bool = True) -> None:
    """Tiny files in the format of cifar-100-python: protocol 2 pickles with bytes keys.

    Image pixels encode the fine label (channel 0) so the remapping can be checked.
    """
    root.mkdir(parents=True, exist_ok=True)
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for c in range(100) for _ in range(per)]
        data = np.zeros((len(labels), 3072), dtype=np.uint8)
        data[:, :1024] = np.array(labels, dtype=np.uint8)[:, None]  # red plane = fine label
        data[:, 1024:] = 200
        obj = {
            b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
            b"batch_label": b"synthetic",
            b"fine_labels": labels,
            b"coarse_labels": [c // 5 for c in labels],
            b"data": data,
        }
        with open(root / split, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    if meta:
        with open(root / "meta", "wb") as f:
            pickle.dump({b"fine_label_names": [f"fine{c}".encode() for c in range(100)]}, f, protocol=2)


def test_split_cifar100_from_synthetic_pickles(tmp_path):
    root = tmp_path / "cifar-100-python"
    _write_cifar(root, train_per_class=10)
    stream = cifar100_stream(root, n_tasks=10, seed=0, val_fraction=0.1)
    assert len(stream) == 10
    seen = []
    for task in stream:
        assert task.num_classes == 10 and task.input_shape == (3, 32, 32)
        assert len(task.train) == 90 and len(task.val) == 10 and len(task.test) == 10
        assert task.train.x.dtype == torch.uint8 and task.train.x.shape[1:] == (3, 32, 32)
        for split in (task.train, task.val, task.test):
            fine = split.x[:, 0, 0, 0].long()
            names = [task.classes[int(label)] for label in split.y]
            assert names == [f"fine{int(c)}" for c in fine]  # remapped labels point at the right class
            assert sorted(split.y.unique().tolist()) == list(range(10)) or split is task.val
        seen += task.classes
        xb, _ = next(task.test.batches(10))
        expected_green = (200 / 255 - CIFAR100_MEAN[1]) / CIFAR100_STD[1]
        torch.testing.assert_close(xb[:, 1], torch.full_like(xb[:, 1], expected_green))
    assert sorted(seen) == sorted(f"fine{c}" for c in range(100))  # every class once
    same = cifar100_stream(root, seed=0)
    other = cifar100_stream(root, seed=1)
    assert same[0].classes == stream[0].classes and other[0].classes != stream[0].classes
    five = build_benchmark(f"split-cifar100:{root}", seed=0, options={"n_tasks": 5, "val_fraction": 0.2})
    assert len(five) == 5 and five[0].num_classes == 20 and len(five[0].val) == 40


def test_split_cifar100_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        cifar100_stream(tmp_path / "nowhere")
    root = tmp_path / "c"
    _write_cifar(root, meta=False)
    assert cifar100_stream(root, n_tasks=2)[0].classes[0].startswith("class-")
    with pytest.raises(DataError, match="n_tasks must divide"):
        cifar100_stream(root, n_tasks=7)
    os.remove(root / "test")
    with pytest.raises(DataError, match=r"CIFAR-100 file .*test is missing"):
        cifar100_stream(root)
    with open(root / "test", "wb") as f:  # wrong keys (str keys, as a Python 3 writer might produce)
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match=r"needs keys b'data' and b'fine_labels', found \['data', 'labels'\]") as info:
        cifar100_stream(root)
    assert "\n" not in str(info.value)
    with open(root / "test", "wb") as f:  # wrong shape
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DataError, match=r"must be a uint8 array of shape \(N, 3072\)"):
        cifar100_stream(root)
    with open(root / "test", "wb") as f:  # label count mismatch
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="fine_labels' must be 2 integers"):
        cifar100_stream(root)
    with open(root / "test", "wb") as f:  # code instead of data
        pickle.dump({b"data": os.getcwd}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to unpickle global"):
        cifar100_stream(root)
    with pytest.raises(DataError, match="split-cifar100 needs a directory"):
        build_benchmark("split-cifar100:")
