"""Settings chosen on validation: `taskshare run ... --grid lr=0.1,0.01 --grid ewc.lambda=10,100`.

For each method, every combination of the grid keys that apply to it (top-level keys such as ``lr`` apply to
all methods, ``ewc.lambda`` only to ``ewc``) is run for every seed into ``OUT/grid/<method>/<setting>/``.
The combination with the best mean validation score over the seeds (``val_avg``: final validation accuracy
averaged over tasks; never the test split) is chosen, ties to the first in grid order (a setting whose
training diverges is recorded with its error and loses), and its runs are copied
to where a plain run would write them (``OUT/<method>`` or ``OUT/seed-S/<method>``). Their results.json gain
``selection``: the grid, every combination's mean validation score, and the choice.

Multi-output benchmarks maximise ``val_delta_m`` (validation Δm, %) against one STL reference per seed trained
at the run's own settings (``OUT/seed-S/stl``), the same for every combination, so scores are comparable;
``stl`` itself is not part of the grid.
"""
from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskshare.core.paths import safe_name
from taskshare.core.serialize import atomic_write_json, read_json
from taskshare.errors import ConfigError, TrainingError

__all__ = ["candidate_dir", "combinations", "parse_grid", "select_on_validation", "setting_label"]

SCORE = "val_avg"


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['lr=0.1,0.01', 'ewc.lambda=10,100'] -> {'lr': ['0.1', '0.01'], 'ewc.lambda': ['10', '100']}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise ConfigError(f"--grid {item!r}: give KEY=V1,V2,... e.g. --grid lr=0.1,0.01,0.001")
        if key.strip() in grid:
            raise ConfigError(f"--grid {key.strip()} is given twice: put all its values in one --grid")
        grid[key.strip()] = list(dict.fromkeys(vals))
    return grid


def _applies(key: str, method: str) -> bool:
    section, dot, _ = key.partition(".")
    return not dot or section in (method, "benchmark")


def combinations(grid: dict[str, list[str]], method: str) -> list[dict[str, str]]:
    keys = [k for k in grid if _applies(k, method)]
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def setting_label(setting: dict[str, str]) -> str:
    return safe_name(",".join(f"{k}={v}" for k, v in setting.items()) or "defaults")


def candidate_dir(out: Path, method: str, setting: dict[str, str]) -> Path:
    """OUT/grid/<method>/<setting>: where a setting's runs go (OUT/grid/.../seed-S/<method>)."""
    return out / "grid" / safe_name(method) / setting_label(setting)


def select_on_validation(run: Callable[[str, dict[str, str], int, Path], dict[str, Any]], methods: list[str],
                         grid: dict[str, list[str]], seeds: list[int], out: Path,
                         final_dir: Callable[[int], Path], score: str = SCORE) -> list[dict[str, Any]]:
    """The chosen results per method and seed (see module docstring); `run(method, setting, seed, dir)` trains
    one method with the extra settings and returns its results (written to dir/<method>). `score`: the
    results.json key to maximise (``val_avg``; multi-output: ``val_delta_m``)."""
    chosen_results = []
    for method in methods:
        scores = []
        for setting in combinations(grid, method):
            where = candidate_dir(out, method, setting)
            entry: dict[str, Any] = {"setting": setting, score: None, "where": str(where.relative_to(out))}
            try:
                res = [run(method, setting, seed, where / f"seed-{seed}") for seed in seeds]
                vals = [r[score] for r in res if isinstance(r.get(score), (int, float))]
                entry[score] = sum(vals) / len(vals) if len(vals) == len(seeds) else None
            except TrainingError as e:   # a diverging setting is a losing candidate, not the end of the grid
                entry["error"] = str(e)
            scores.append(entry)
        ok = [i for i, e in enumerate(scores) if e[score] is not None]
        if not ok:
            raise TrainingError(f"{method}: every --grid setting failed ({scores[0].get('error', '')}); widen the grid")
        best = max(ok, key=lambda i: (scores[i][score], -i))
        selection = {"on": f"{score} (validation, mean over seeds {seeds})", "grid":
                     {k: v for k, v in grid.items() if _applies(k, method)}, "scores": scores,
                     "chosen": scores[best]["setting"]}
        for seed in seeds:
            src = out / scores[best]["where"] / f"seed-{seed}" / method
            dst = final_dir(seed) / method
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
            results = read_json(dst / "results.json", "results")
            results["selection"] = selection
            atomic_write_json(dst / "results.json", results)
            chosen_results.append(results)
    return chosen_results
