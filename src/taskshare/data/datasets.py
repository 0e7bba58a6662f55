"""In-memory datasets, batch transforms, tasks and task streams.

A :class:`TensorDataset` holds a whole split as two tensors: ``x`` (often uint8 to save memory)
and int64 labels ``y``.  Its optional ``transform`` is applied to whole BATCHES and returns float32,
so several datasets can share one ``x`` tensor and differ only in their transform (permuted-MNIST
tasks do this).  Image tasks yield ``(N, C, H, W)`` float32 batches; models flatten themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from taskshare.errors import DataError

__all__ = [
    "TensorDataset",
    "Task",
    "Stream",
    "Transform",
    "ToFloat",
    "Normalize",
    "Permute",
    "Compose",
    "cap_stratified",
    "split_train_val",
    "stratified_order",
]

Transform = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------- transforms
class ToFloat:
    """``x.float() * scale``: uint8 pixels to float32 in [0, 1] by default."""

    def __init__(self, scale: float = 1 / 255) -> None:
        self.scale = float(scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.to(torch.float32)
        if self.scale == 1.0:
            return out
        return out.mul_(self.scale) if out.data_ptr() != x.data_ptr() else out * self.scale  # in place on the copy

    def __repr__(self) -> str:
        return f"ToFloat(scale={self.scale:g})"


class Normalize:
    """Per-channel ``(x - mean) / std`` on float batches of shape (N, C, ...); scalars apply to all channels."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        self.std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if len(self.mean) != len(self.std) or (self.std <= 0).any():
            raise DataError(f"Normalize needs mean and std of equal length with std > 0, got {mean} and {std}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        shape = (1, -1) + (1,) * (x.dim() - 2) if len(self.mean) > 1 else (1,)
        return (x - self.mean.view(shape).to(x.device)) / self.std.view(shape).to(x.device)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Permute:
    """Fixed permutation of the flattened features of each sample; keeps the sample shape and dtype."""

    def __init__(self, perm: torch.Tensor | Sequence[int]) -> None:
        self.perm = torch.as_tensor(perm, dtype=torch.int64)
        if self.perm.dim() != 1 or not torch.equal(torch.sort(self.perm).values, torch.arange(len(self.perm))):
            raise DataError(f"Permute needs a permutation of 0..n-1, got a tensor of shape {tuple(self.perm.shape)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != len(self.perm):
            raise DataError(f"Permute has {len(self.perm)} positions but samples have {flat.shape[1]} features")
        return flat.index_select(1, self.perm.to(x.device)).reshape(x.shape)

    def __repr__(self) -> str:
        return f"Permute(n={len(self.perm)})"


class Compose:
    """Apply transforms left to right."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


# ------------------------------------------------------------------------------------------ dataset
def _as_index(indices: torch.Tensor | Sequence[int], n: int) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise DataError(f"boolean mask of shape {tuple(idx.shape)} does not match a dataset of {n} samples")
        return idx.nonzero().flatten()
    idx = idx.to(torch.int64).flatten()
    if len(idx) and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise DataError(f"subset indices fall outside 0..{n - 1}; pass indices of this dataset")
    return idx


class TensorDataset:
    """A whole split in memory: ``x`` (N, ...) any dtype, ``y`` (N,) int64, optional batch ``transform``.

    Batches are ``(transform(x[idx]), y[idx])`` with a float32 x; without a transform x is just cast
    to float32.  ``x`` may be shared with other datasets (no copy is made here).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Transform | None = None) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError("TensorDataset needs torch tensors x and y; convert arrays with torch.as_tensor")
        if y.dim() != 1 or len(x) != len(y):
            raise DataError(f"TensorDataset needs y of shape (N,) matching x, got x {tuple(x.shape)} and y {tuple(y.shape)}")
        self.x = x
        self.y = y.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"TensorDataset(n={len(self)}, x={tuple(self.x.shape)} {self.x.dtype}, transform={self.transform!r})"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The transform on a batch of raw ``x`` rows (always float32 out)."""
        out = self.transform(x) if self.transform is not None else x
        out = out.to(torch.float32)
        if out.data_ptr() == x.data_ptr() and out.numel():
            out = out.clone()  # never hand out a view of the stored data
        return out

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x_float32, y)`` batches; with ``shuffle`` one ``randperm`` per call (per epoch)."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            if order is None:
                xb, yb = self.x[start:end], self.y[start:end]
            else:
                idx = order[start:end]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            yield self.apply(xb), yb

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed batch at ``indices``: ``(x_float32, y)``."""
        return self.apply(self.x.index_select(0, indices)), self.y.index_select(0, indices)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> TensorDataset:
        """A new dataset holding the given rows (a copy), with the same transform."""
        idx = _as_index(indices, len(self))
        return TensorDataset(self.x.index_select(0, idx), self.y.index_select(0, idx), self.transform)

    def head(self, n: int) -> TensorDataset:
        """The first ``n`` samples (a view sharing storage)."""
        return TensorDataset(self.x[:n], self.y[:n], self.transform)

    def with_transform(self, transform: Transform | None) -> TensorDataset:
        """Same x and y tensors (shared storage), another transform."""
        return TensorDataset(self.x, self.y, transform)

    def to_tensors(self, chunk_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split transformed, computed in chunks: ``(x_float32, y)``."""
        if len(self) == 0:
            empty = self.apply(self.x[:0])
            return empty, self.y.clone()
        parts = [self.apply(self.x[i: i + chunk_size]) for i in range(0, len(self), chunk_size)]
        return torch.cat(parts), self.y.clone()

    def class_counts(self, num_classes: int | None = None) -> torch.Tensor:
        return torch.bincount(self.y, minlength=num_classes or 0)


# ------------------------------------------------------------------------------------- index splits
def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def _rank_in_class(y: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the permuted order ``perm``: each position's rank within its class, and the class sizes."""
    yp = y[perm]
    counts = torch.bincount(yp)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(yp, stable=True)
    rank = torch.empty_like(perm)
    rank[order] = torch.arange(len(yp)) - starts[yp[order]]
    return rank, counts


def stratified_order(y: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded random order of ``0..N-1`` in which every prefix is (close to) class-stratified."""
    y = torch.as_tensor(y, dtype=torch.int64)
    if len(y) == 0:
        return torch.zeros(0, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=_generator(seed))
    rank, counts = _rank_in_class(y, perm)
    key = (rank.double() + 0.5) / counts[y[perm]].double()
    return perm[torch.argsort(key, stable=True)]


def cap_stratified(ds: TensorDataset, n: int, seed: int) -> TensorDataset:
    """A class-stratified subset of at most `n` samples of `ds` (n = 0: all of it), in the original order."""
    if not n or len(ds) <= n:
        return ds
    return ds.subset(torch.sort(stratified_order(ds.y, seed)[:n]).values)


def split_train_val(
    x: torch.Tensor | None, y: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve a validation split out of TRAIN data: returns sorted ``(train_idx, val_idx)``.

    Stratified per class: ``round(len(y) * val_fraction)`` samples in total, spread over the classes
    in proportion to their size (largest remainders), each class keeping at least one training
    sample; which samples go to validation is drawn from a permutation seeded by ``seed``.  ``x`` is
    unused (kept for call-site symmetry).  Never call this on test data.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}; pass e.g. 0.1")
    y = torch.as_tensor(y, dtype=torch.int64)
    n = len(y)
    if n == 0 or val_fraction == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    perm = torch.randperm(n, generator=_generator(seed))
    rank, counts = _rank_in_class(y, perm)
    ideal = counts.double() * float(val_fraction)
    k = torch.floor(ideal).long()
    missing = int(round(n * float(val_fraction))) - int(k.sum())
    if missing > 0:
        extra = torch.argsort(ideal - k.double(), descending=True, stable=True)[:missing]
        k[extra] += 1
    k = torch.minimum(k, (counts - 1).clamp(min=0))
    is_val = rank < k[y[perm]]
    val_idx = torch.sort(perm[is_val]).values
    train_idx = torch.sort(perm[~is_val]).values
    return train_idx, val_idx


# ------------------------------------------------------------------------------------ task / stream
@dataclass
class Task:
    """One classification task: train/val/test splits, label count, input shape and class names."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(s) for s in self.input_shape)
        if not self.classes:
            self.classes = [str(i) for i in range(self.num_classes)]
        if len(self.classes) != self.num_classes:
            raise DataError(f"task {self.name!r} has {self.num_classes} classes but {len(self.classes)} class names")

    def limit(self, n: int | None, *, seed: int) -> Task:
        """This task with its train split capped at ``n`` samples (seeded, class-stratified); val/test unchanged."""
        if n is None or n >= len(self.train):
            return self
        if n < 0:
            raise DataError(f"limit must be >= 0 or None, got {n}")
        keep = torch.sort(stratified_order(self.train.y, seed)[:n]).values
        return dataclasses.replace(self, train=self.train.subset(keep))

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, classes={self.num_classes}, input={self.input_shape}, "
            f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)})"
        )


@dataclass
class Stream:
    """An ordered sequence of tasks (a continual-learning benchmark or a multi-task set).

    ``default_model``: the backbone that ``model=auto`` means on this stream (the transfer benchmarks name
    their pretrained network, e.g. ``mobilenetv2``); empty: the learners' own ``auto`` rule.
    """

    name: str
    tasks: list[Task]
    description: str = ""
    default_model: str = ""

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, key: int | str) -> Task:
        if isinstance(key, str):
            for task in self.tasks:
                if task.name == key:
                    return task
            raise DataError(f"stream {self.name!r} has no task {key!r}; its tasks are {', '.join(self.task_names)}")
        return self.tasks[key]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, tasks={self.task_names})"
