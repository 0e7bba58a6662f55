"""Group loaded results by (benchmark, method) across seeds; mean and sample std of their values."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real

__all__ = ["Group", "Stat", "fmt_number", "group_results", "is_number", "stat"]

# config keys that do not change what is measured: runs differing only in these are seeds of one experiment
_NOT_IDENTITY = ("seed", "device", "checkpoint_minutes", "eval_batch_size")


def is_number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x))


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n-1) of the numeric values; std is None for n < 2."""

    mean: float | None
    std: float | None
    n: int

    @property
    def varies(self) -> bool:
        return self.std is not None and self.std > 0


def stat(values) -> Stat:
    xs = [float(x) for x in values if is_number(x)]
    if not xs:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


def fmt_number(x, decimals: int = 2, sign: bool = False, grouping: bool = False) -> str:
    """``format`` that never writes a negative zero: values that round to 0 print as ``0.00`` (no sign)."""
    if not is_number(x):
        return "-"
    v = round(float(x), decimals)
    if v == 0:
        v, sign = 0.0, False
    return format(v, ("+" if sign else "") + ("," if grouping else "") + f".{decimals}f")


@dataclass
class Group:
    """The runs of one method on one benchmark with one configuration, one run per seed (sorted by seed)."""

    benchmark: str
    method: str
    label: str  # the method, plus the config keys that tell it apart from another group of the same method
    runs: list[dict] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return [r.get("seed") for r in self.runs]

    @property
    def multitask(self) -> bool:
        return isinstance(self.runs[0].get("task_metrics"), dict)

    def stat(self, value: Callable[[dict], object]) -> Stat:
        """Mean and std over the runs of ``value(run)``; runs where it is null or missing are left out."""
        return stat(value(r) for r in self.runs)

    def key(self, name: str) -> Stat:
        return self.stat(lambda r: r.get(name))


def _identity(r: dict) -> dict:
    cfg = r.get("config") if isinstance(r.get("config"), dict) else {}
    return {k: v for k, v in cfg.items() if k not in _NOT_IDENTITY}


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _labels(method: str, configs: list[dict]) -> list[str]:
    """``method`` alone, or ``method [lr=0.1]`` naming the config keys that differ between its groups."""
    if len(configs) == 1:
        return [method]
    flats = [_flat(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k, "-"), sort_keys=True, default=str) for f in flats}) > 1]
    return [f"{method} [" + ", ".join(f"{k}={f.get(k, '-')}" for k in differ) + "]" for f in flats]


def _seed_key(r: dict):
    s = r.get("seed")
    return (0, s, str(r.get("_path", ""))) if is_number(s) else (1, 0, str(r.get("_path", "")))


def group_results(results: Sequence[dict]) -> list[Group]:
    """One Group per (benchmark, method, configuration but the seed), sorted by benchmark then method label.

    Runs of one method whose configurations differ in more than the seed (say ``lr``) form separate
    groups, labelled ``method [lr=0.1]``; their runs are never averaged together.
    """
    by_key: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in results:
        fp = json.dumps(_identity(r), sort_keys=True, default=str)
        by_key.setdefault((str(r.get("benchmark")), str(r.get("method"))), {}).setdefault(fp, []).append(r)
    groups = []
    for (bench, method), by_fp in by_key.items():
        fps = sorted(by_fp)
        labels = _labels(method, [json.loads(fp) for fp in fps])
        for fp, label in zip(fps, labels):
            groups.append(Group(bench, method, label, sorted(by_fp[fp], key=_seed_key)))
    return sorted(groups, key=lambda g: (g.benchmark, g.label.casefold(), g.label))
