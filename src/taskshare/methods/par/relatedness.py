"""PAR's task relatedness: the nearest-prototype divergence (Wang et al., CVPR 2023; official code WenjinW/PAR@5539e08).

For a new task t with features f_n (n = 1..N, labels y_n) of its validation split from a frozen extractor,
and an earlier task p with class prototypes (feature means) mu_j^p:

    rho_n = || f_n - mu_{y_n}^t ||           distance to its own class prototype (f_n is inside mu^t)
    nu_n  = min_j || f_n - mu_j^p ||          distance to the nearest prototype of p
    D_c   = mean_{n in class c} log(nu_n / rho_n)
    D(t||p) = sum_c max(D_c, 0)               a SUM over t's classes (the official averaging is commented out)
    s(t, p) = min(1 - exp(-2 D), D)           in [0, 1): 0 = same distribution, -> 1 = unrelated

This is the Wang-Kulkarni-Verdu 1-NN KL estimator with prototypes in place of neighbours and without the
factor d and the log(m/(n-1)) term. Euclidean distances, no feature normalisation (all as in the official
code). The estimator is vectorised (one `cdist` per task pair).

**Identical samples** (``zero_is_unrelated``). If t's data equals p's, every nu_n <= rho_n, so D = 0 and
s = 0 ("the same task"). The official code then sets s = 1 ("unrelated": allocate and search), a quirk the
paper does not state; ``zero_is_unrelated=True`` reproduces it (default off).

**Sample-size bias** (``loo``). f_n is part of its own prototype, which pulls mu^t towards f_n: with n_c
samples per class in d dimensions and within-class variance sigma^2 per dimension,

    E rho^2 ~ sigma^2 d (n_c - 1)/n_c        while     E nu^2 ~ sigma^2 d (1 + 1/n_p)

for a task p from the same distribution (its prototype from n_p independent samples). In high dimension
the distances concentrate, so log(nu/rho) ~ 1/(2 n_p) + 1/(2 n_c) ~ 1/n per class and D ~ C/n: for C = 10
classes and n = 50 validation samples per class, s ~ 0.2 for a task from the SAME distribution, and the
reuse thresholds (0.5 / 0.75) silently depend on the class count and the validation-set size.

The leave-one-out prototype mu_{-n} = (n_c mu_c - f_n)/(n_c - 1) removes f_n from its own prototype; since
f_n - mu_{-n} = n_c/(n_c - 1) (f_n - mu_c), exactly

    rho_n^LOO = rho_n · n_c / (n_c - 1)

(closed form, no extra pass). Then rho and nu are both distances from a sample to a prototype it did not
contribute to, E rho_LOO^2 ~ sigma^2 d (1 + 1/(n_c - 1)), and the remaining per-class bias
0.5 log((1 + 1/n_p)/(1 + 1/(n_c - 1))) is zero for n_p = n_c - 1 and at most 1/(2 min(n_p, n_c - 1)) in size
(of either sign) otherwise. With ``loo=True`` a same-distribution task scores s ~ 0 whatever C and n, so
the thresholds mean the same thing for every stream; it needs >= 2 samples per class.

Classes of t with no sample are skipped; a class with a single sample has rho = 0 (it IS its prototype):
the estimator is undefined there, so callers fall back to more data (see the PAR learner) or get a
one-line DataError.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from taskshare import progress
from taskshare.errors import ConfigError, DataError, TaskshareError

Extractor = Callable[[torch.Tensor], torch.Tensor]
_TINY = 1e-12
_DIRECT = "donot_use_mm_for_euclid_dist"


# --------------------------------------------------------------------------------------------- estimator
def class_stats(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prototypes (C, d), counts (C,)) of a labelled feature set; absent classes have a zero prototype."""
    f = features.double()
    counts = torch.bincount(labels, minlength=num_classes)
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    return sums / counts.clamp_min(1).unsqueeze(1).to(f.dtype), counts


def prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Class means (K, d), float64, of the classes that have samples (in label order)."""
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    protos, counts = class_stats(features, labels, num_classes)
    return protos[counts > 0]


def divergence(features: torch.Tensor, labels: torch.Tensor, other: torch.Tensor, *, loo: bool = False,
               num_classes: int | None = None) -> tuple[float, torch.Tensor]:
    """D(t||p) of the labelled features of t against p's prototypes `other` (K, d); also the per-class D_c.

    Per-class values of absent classes are NaN and do not count.
    """
    if len(labels) == 0:
        raise DataError("relatedness needs at least one sample of the new task: give it a validation split")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    f = features.double()
    own, counts = class_stats(f, labels, num_classes)
    if loo and bool((counts[labels] < 2).any()):
        raise DataError("leave-one-out relatedness needs >= 2 samples per class: use a larger validation split "
                        "or par.loo=false")
    # both distances by the same direct (not matmul-based) formula: identical data gives nu <= rho exactly
    rho = torch.cdist(f, own, compute_mode=_DIRECT).gather(1, labels.unsqueeze(1)).squeeze(1)
    if loo:
        n = counts[labels].to(f.dtype)
        rho = rho * n / (n - 1)
    nu = torch.cdist(f, other.to(f.device, f.dtype), compute_mode=_DIRECT).min(1).values
    ratio = torch.log(nu.clamp_min(_TINY)) - torch.log(rho.clamp_min(_TINY))
    per_class = torch.zeros(num_classes, dtype=f.dtype, device=f.device).index_add_(0, labels, ratio)
    per_class = per_class / counts.clamp_min(1).to(f.dtype)
    per_class[counts == 0] = float("nan")
    present = counts > 0
    return float(per_class[present].clamp_min(0).sum()), per_class.float().cpu()


def similarity(d: float, zero_is_unrelated: bool = False) -> float:
    """s = min(1 - exp(-2D), D); with the official quirk, s = 0 becomes 1."""
    s = min(1.0 - math.exp(-2.0 * d), d)
    return 1.0 if zero_is_unrelated and s == 0.0 else s


def task_relatedness(features: torch.Tensor, labels: torch.Tensor, other: torch.Tensor, *, loo: bool = False,
                     zero_is_unrelated: bool = False, num_classes: int | None = None) -> tuple[float, float]:
    """(s, D) of a new task's labelled features against an earlier task's prototypes."""
    d, _ = divergence(features, labels, other, loo=loo, num_classes=num_classes)
    return similarity(d, zero_is_unrelated), d


def relatedness_matrix(tasks: Sequence[tuple[torch.Tensor, torch.Tensor]], *, loo: bool = False,
                       zero_is_unrelated: bool = False) -> torch.Tensor:
    """M[i, j] = s(task i || task j) from each task's (features, labels); asymmetric, diagonal included."""
    protos = [prototypes(f, y) for f, y in tasks]
    T = len(tasks)
    m = torch.zeros(T, T)
    for i, (f, y) in enumerate(tasks):
        for j in range(T):
            m[i, j] = task_relatedness(f, y, protos[j], loo=loo, zero_is_unrelated=zero_is_unrelated)[0]
    return m


# -------------------------------------------------------------------------------------------- extractors
def raw_extractor(x: torch.Tensor) -> torch.Tensor:
    """The inputs themselves, flattened (no network)."""
    return x.flatten(1)


def mobilenet_extractor(input_shape: tuple[int, ...], image_size: int | None = None,
                        device: torch.device | str = "cpu") -> Extractor:
    """The frozen ImageNet MobileNetV2 (1280-d pooled features; grayscale repeated, ImageNet normalisation).

    ``image_size`` None keeps the native resolution (as the official code does with its ResNet-18).
    """
    from taskshare.models.mobilenetv2 import MobileNetV2Backbone

    net = MobileNetV2Backbone(input_shape, image_size=image_size).load_imagenet().to(device).eval()
    net.requires_grad_(False)

    def extract(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    extract.net = net  # keep a handle (for tests / inspection)
    return extract


def make_extractor(name: str, input_shape: tuple[int, ...], *, image_size: int | None = None,
                   device: torch.device | str = "cpu") -> tuple[Extractor, str]:
    """(extractor, resolved name) for ``mobilenetv2``, ``raw`` or ``auto`` (MobileNetV2 when its weights are
    installed, else raw inputs)."""
    if name == "raw":
        return raw_extractor, "raw"
    if name in ("mobilenetv2", "auto"):
        try:
            return mobilenet_extractor(input_shape, image_size, device), "mobilenetv2"
        except (ImportError, OSError, TaskshareError):
            if name == "mobilenetv2":
                raise  # its one-line message names the missing weights and the install command
        return raw_extractor, "raw"
    raise ConfigError(f"unknown relatedness extractor {name!r}: choose auto, mobilenetv2, raw (or expert in PAR)")


def extract_features(extractor: Extractor, dataset, batch_size: int = 512, device: torch.device | str = "cpu",
                     desc: str = "relatedness features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, d) float32 on CPU, labels (N,)) of a TensorDataset, in batches (a progress bar `desc`)."""
    feats, labels = [], []
    with progress.bar(-(-len(dataset) // batch_size), desc) as bar:
        for x, y in dataset.batches(batch_size, shuffle=False):
            with torch.inference_mode():
                feats.append(extractor(x.to(device)).float().flatten(1).cpu())
            labels.append(y)
            bar.update(1)
    if not feats:
        raise DataError("relatedness needs samples: the split is empty")
    return torch.cat(feats), torch.cat(labels)


# ------------------------------------------------------------------------------------------------ report
def _save_heatmap(m: torch.Tensor, names: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from taskshare.core.serialize import save_figure

    T = len(names)
    side = min(2.5 + 0.55 * T, 16)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    try:
        im = ax.imshow(m.numpy(), cmap="magma_r", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="s (0 related, 1 unrelated)")
        if T <= 25:
            fs = max(6, min(10, 140 // T))
            for i in range(T):
                for j in range(T):
                    v = float(m[i, j])
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fs,
                            color="white" if v > 0.5 else "black")
        ax.set_xticks(range(T), names, rotation=45, ha="right")
        ax.set_yticks(range(T), names)
        ax.set_xlabel("earlier task p (prototypes)")
        ax.set_ylabel("new task t (samples)")
        ax.set_title(title, fontsize=11)
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def relatedness_report(stream, out_dir: str | os.PathLike, extractor: str | Extractor = "auto", *,
                       loo: bool = False, zero_is_unrelated: bool = False, image_size: int | None = None,
                       batch_size: int = 512, device: str = "cpu") -> str:
    """The task-relatedness matrix of a stream (validation splits), printed as a table and saved as
    ``OUT/relatedness.png`` (heatmap) and ``OUT/relatedness.json``; returns the printed text.

    `extractor`: ``auto`` | ``mobilenetv2`` | ``raw`` or a callable x -> features.
    """
    from taskshare.core.serialize import atomic_write_json

    tasks = list(stream.tasks)
    if not tasks:
        raise DataError(f"stream {stream.name!r} has no tasks")
    if callable(extractor):
        fn, name = extractor, getattr(extractor, "__name__", "custom")
    else:
        if extractor == "expert":
            raise ConfigError("extractor=expert needs trained PAR experts: use auto, mobilenetv2 or raw here")
        fn, name = make_extractor(extractor, tasks[0].input_shape, image_size=image_size, device=device)
    data = []
    for i, t in enumerate(tasks):
        split = t.val if len(t.val) else t.train
        data.append(extract_features(fn, split, batch_size, device,
                                     desc=f"relatedness features, task {i + 1}/{len(tasks)} ({t.name})"))
    m = relatedness_matrix(data, loo=loo, zero_is_unrelated=zero_is_unrelated)
    names = [t.name for t in tasks]
    width = max(8, *(len(n) for n in names))
    lines = [f"task relatedness s(row || column) of {stream.name} ({name} features, validation splits"
             f"{', leave-one-out' if loo else ''}): 0 = same distribution, 1 = unrelated",
             " " * (width + 1) + " ".join(f"{n[:8]:>8}" for n in names)]
    lines += [f"{names[i]:<{width}} " + " ".join(f"{float(m[i, j]):8.3f}" for j in range(len(names)))
              for i in range(len(names))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = _save_heatmap(m, names, f"{stream.name}: task relatedness ({name})", out / "relatedness.png")
    info: dict[str, Any] = {"benchmark": stream.name, "tasks": names, "extractor": name, "loo": loo,
                            "zero_is_unrelated": zero_is_unrelated, "matrix": m.tolist()}
    atomic_write_json(out / "relatedness.json", info)
    lines.append(f"wrote {png} and {out / 'relatedness.json'}")
    text = "\n".join(lines)
    print(text)
    return text
