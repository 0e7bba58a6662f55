"""Tasks built from data at a user-given path: image folders and the CIFAR-100 python pickles.

Nothing here downloads anything; the user points taskshare at files they already have.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from taskshare.data.datasets import Compose, Normalize, Stream, Task, TensorDataset, ToFloat, split_train_val
from taskshare.data.safe_pickle import safe_load
from taskshare.errors import DataError

__all__ = ["imagefolder_task", "cifar100_stream", "IMAGE_EXTENSIONS", "CIFAR100_MEAN", "CIFAR100_STD"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
TEST_FRACTION = 0.2  # carved from an image folder without train/ and test/ subfolders
TEST_SEED = 0  # fixed: the test split never depends on the run seed
MAX_PIXELS = 4096 * 4096  # per image: larger files are refused before decoding (decompression bombs)


def _too_large(path: Path, what: str) -> DataError:
    return DataError(f"image {path} {what} the cap of {MAX_PIXELS:,} pixels per image: shrink it (or remove it) "
                     "before training")
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


# ---------------------------------------------------------------------------------------- images
def _parse_size(image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(isinstance(s, int) for s in image_size):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise DataError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(size) < 1:
        raise DataError(f"image_size must be positive, got {image_size!r}")
    return size


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _scan(root: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of an ImageFolder root; ``classes`` fixes the label order (test folders)."""
    dirs = _class_dirs(root)
    if classes is None:
        classes = [d.name for d in dirs]
        if len(classes) < 2:
            raise DataError(
                f"image folder {root} has {len(classes)} class subfolder(s); lay it out as {root}/<class>/<image> with at least 2 classes"
            )
    known = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in known:
            raise DataError(f"class folder {d} has no counterpart in the train folder; use the same class names in train/ and test/")
        found = _image_files(d)
        if not found:
            raise DataError(f"class folder {d} holds no {'/'.join(IMAGE_EXTENSIONS)} images; add images or remove the folder")
        files += found
        labels += [known[d.name]] * len(found)
    return files, labels, classes


def load_images(files: list[Path], size: tuple[int, int] | None, grayscale: bool) -> torch.Tensor:
    """Read images as uint8 (N, C, H, W); resize to ``size`` or require the first image's size."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if grayscale else "RGB"
    resize = size is not None
    arrays = []
    first: Path | None = None
    for path in files:
        try:
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise _too_large(path, f"is {img.width}x{img.height} pixels, over")
                img = img.convert(mode)
                if resize and (img.height, img.width) != size:
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except Image.DecompressionBombError:
            raise _too_large(path, "claims more pixels than") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path} ({' '.join(str(exc).split())[:120]}); fix or remove the file") from None
        if first is None:
            first, size = path, (arr.shape[0], arr.shape[1])
        elif arr.shape[:2] != size:
            raise DataError(
                f"image {path} is {arr.shape[0]}x{arr.shape[1]} but {first} is {size[0]}x{size[1]}; pass image_size to resize all images"
            )
        arrays.append(arr)
    x = np.stack(arrays)
    x = x[:, None] if grayscale else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def imagefolder_task(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    grayscale: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Task:
    """A task from an ImageFolder layout ``root/<class>/*.{png,jpg,jpeg,bmp}``.

    If ``root/train`` and ``root/test`` exist they are the splits; otherwise a stratified 20% test
    split is carved with the fixed seed 0 (independent of ``seed``).  Validation is carved from
    train with ``seed``.  Images are read with PIL as RGB (or one channel with ``grayscale``),
    resized to ``image_size`` (int or (height, width)) if given, else all must share the first
    image's size; stored uint8 ``(N, C, H, W)``, batches are float32 in [0, 1].
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass a directory laid out as <dir>/<class>/<image>")
    size = _parse_size(image_size)
    train_root, test_root = root / "train", root / "test"
    if train_root.is_dir() and test_root.is_dir():
        files, labels, classes = _scan(train_root, None)
        test_files, test_labels, _ = _scan(test_root, classes)
        all_x = load_images(files + test_files, size, grayscale)
        x, test_x = all_x[: len(files)], all_x[len(files):]
        y, test_y = torch.tensor(labels, dtype=torch.int64), torch.tensor(test_labels, dtype=torch.int64)
    else:
        files, labels, classes = _scan(root, None)
        all_x = load_images(files, size, grayscale)
        all_y = torch.tensor(labels, dtype=torch.int64)
        keep, test_idx = split_train_val(None, all_y, TEST_FRACTION, TEST_SEED)
        x, y = all_x[keep], all_y[keep]
        test_x, test_y = all_x[test_idx], all_y[test_idx]
    train_idx, val_idx = split_train_val(None, y, val_fraction, seed)
    transform = ToFloat()
    return Task(
        name=name or root.name,
        train=TensorDataset(x[train_idx], y[train_idx], transform),
        val=TensorDataset(x[val_idx], y[val_idx], transform),
        test=TensorDataset(test_x, test_y, transform),
        num_classes=len(classes),
        input_shape=tuple(x.shape[1:]),
        classes=classes,
    )


# -------------------------------------------------------------------------------------- CIFAR-100
def _cifar_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    path = directory / split
    if not path.is_file():
        raise DataError(
            f"CIFAR-100 file {path} is missing; pass the extracted `cifar-100-python` directory (with train, test and meta)"
        )
    with open(path, "rb") as f:
        obj = safe_load(f, encoding="bytes", name=str(path))
    if not isinstance(obj, dict) or b"data" not in obj or b"fine_labels" not in obj:
        keys = "[" + ", ".join(sorted(repr(k) for k in obj)) + "]" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{path} is not a CIFAR-100 python pickle (needs keys b'data' and b'fine_labels', found {keys}); pass the `cifar-100-python` directory"
        )
    data, labels = obj[b"data"], obj[b"fine_labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {type(data).__name__} {shape}; re-extract the CIFAR-100 archive")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: b'fine_labels' must be {len(data)} integers, got shape {labels.shape}; re-extract the CIFAR-100 archive")
    if len(labels) and (labels.min() < 0 or labels.max() > 99):
        raise DataError(f"{path}: b'fine_labels' fall outside 0..99; re-extract the CIFAR-100 archive")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels.astype(np.int64))


def _cifar_names(directory: Path) -> list[str]:
    path = directory / "meta"
    if path.is_file():
        with open(path, "rb") as f:
            meta = safe_load(f, encoding="bytes", name=str(path))
        names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
        if isinstance(names, list) and len(names) == 100:
            return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    return [f"class-{i}" for i in range(100)]


def cifar100_stream(
    path: str | os.PathLike, *, n_tasks: int = 10, seed: int = 0, val_fraction: float = 0.1
) -> Stream:
    """Split CIFAR-100 from the user's ``cifar-100-python`` directory (pickles read with safe_pickle).

    The 100 fine classes are shuffled with ``seed`` and cut into ``n_tasks`` tasks of
    ``100 // n_tasks`` classes, labels remapped to ``0..C-1`` in that order.  Inputs (3, 32, 32),
    stored uint8, batches normalised with the CIFAR-100 mean/std.  Validation comes from train.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise DataError(f"CIFAR-100 directory {directory} does not exist; pass the extracted `cifar-100-python` directory")
    if not isinstance(n_tasks, int) or n_tasks < 1 or 100 % n_tasks:
        raise DataError(f"n_tasks must divide the 100 CIFAR-100 classes (1, 2, 4, 5, 10, 20, 25, 50, 100), got {n_tasks}")
    x_train, y_train = _cifar_split(directory, "train")
    x_test, y_test = _cifar_split(directory, "test")
    names = _cifar_names(directory)
    g = torch.Generator()
    g.manual_seed(int(seed))
    order = torch.randperm(100, generator=g)
    per_task = 100 // n_tasks
    transform = Compose([ToFloat(), Normalize(CIFAR100_MEAN, CIFAR100_STD)])
    tasks = []
    for t in range(n_tasks):
        task_classes = order[t * per_task: (t + 1) * per_task]
        remap = torch.full((100,), -1, dtype=torch.int64)
        remap[task_classes] = torch.arange(per_task)
        tr = (remap[y_train] >= 0).nonzero().flatten()
        te = (remap[y_test] >= 0).nonzero().flatten()
        ytr = remap[y_train[tr]]
        train_idx, val_idx = split_train_val(None, ytr, val_fraction, seed)
        tasks.append(
            Task(
                name=f"cifar100-{t}",
                train=TensorDataset(x_train[tr[train_idx]], ytr[train_idx], transform),
                val=TensorDataset(x_train[tr[val_idx]], ytr[val_idx], transform),
                test=TensorDataset(x_test[te], remap[y_test[te]], transform),
                num_classes=per_task,
                input_shape=(3, 32, 32),
                classes=[names[int(c)] for c in task_classes],
            )
        )
    return Stream(
        name="split-cifar100",
        tasks=tasks,
        description=f"Split CIFAR-100 from {directory}: {n_tasks} tasks of {per_task} classes (class order from seed {seed})",
    )
