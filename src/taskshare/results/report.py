"""Read ``results.json`` files, print a comparison table and write PNG plots.

Runs of one (benchmark, method) that differ only by seed (``taskshare run --seed 0,1,2`` writes
``OUT/seed-<k>/<method>/results.json``) are grouped: the table shows ``mean ± std`` over seeds
(``results.table``) and the plots a mean with ±std bands or error bars (``results.plots``,
``results.plots_multi``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from numbers import Real
from pathlib import Path

from taskshare.core.paths import safe_name
from taskshare.errors import TaskshareError
from taskshare.results.groups import group_results
from taskshare.results.metrics import validate_matrix
from taskshare.results.table import comparison_table, selection_table, task_metrics_tables

__all__ = ["REQUIRED_KEYS", "comparison_table", "find_results", "plot_results", "report"]

REQUIRED_KEYS = (
    "benchmark", "method", "seed", "tasks", "acc_matrix", "avg_acc", "bwt", "fwt", "forgetting",
    "params", "artifact_bytes", "time_s", "peak_rss_mb", "config", "versions",
)
_PARAMS_KEYS = ("base", "added_per_task", "total")
_NULLABLE_NUMBERS = ("avg_acc", "bwt", "fwt", "forgetting", "time_s", "peak_rss_mb")


# ---------------------------------------------------------------- loading

def _is_number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _load(path: Path) -> dict:
    """Load and check one results.json; errors name the file and the key."""
    fix = "re-run `taskshare run` to rewrite it"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskshareError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}); {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskshareError(f"{path}: cannot read ({e}); check the file or {fix}") from None
    if not isinstance(data, dict):
        raise TaskshareError(f"{path}: top level is not a JSON object; {fix}")

    def bad(key: str, why: str) -> TaskshareError:
        return TaskshareError(f"{path}: key '{key}' {why}; {fix}")

    for key in REQUIRED_KEYS:
        if key not in data:
            raise bad(key, "is missing")
    for key in ("benchmark", "method"):
        if not isinstance(data[key], str) or not data[key]:
            raise bad(key, "is not a non-empty string")
    if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
        raise bad("seed", "is not an integer")
    if not isinstance(data["tasks"], list) or not all(isinstance(t, str) for t in data["tasks"]):
        raise bad("tasks", "is not a list of task names")
    for key in _NULLABLE_NUMBERS:
        if data[key] is not None and not _is_number(data[key]):
            raise bad(key, "is not a number or null")
    multitask = isinstance(data.get("task_metrics"), dict)  # multi-output runs: acc_matrix may be null
    if not (multitask and data["acc_matrix"] is None):
        try:
            validate_matrix(data["acc_matrix"])
        except TaskshareError as e:
            raise bad("acc_matrix", f"is invalid ({e})") from None
        if len(data["acc_matrix"]) != len(data["tasks"]):
            raise bad("acc_matrix", f"has {len(data['acc_matrix'])} rows but 'tasks' names {len(data['tasks'])}")
    params = data["params"]
    if not isinstance(params, dict):
        raise bad("params", "is not an object")
    for key in _PARAMS_KEYS:
        if key not in params:
            raise bad(f"params.{key}", "is missing")
    if not isinstance(params["added_per_task"], list) or not all(_is_number(x) for x in params["added_per_task"]):
        raise bad("params.added_per_task", "is not a list of integers")
    for key in ("base", "total"):
        if not _is_number(params[key]):
            raise bad(f"params.{key}", "is not an integer")
    ab = data["artifact_bytes"]
    if not isinstance(ab, dict) or not all(_is_number(v) for v in ab.values()):
        raise bad("artifact_bytes", "is not an object {task: bytes}")
    for key in ("config", "versions"):
        if not isinstance(data[key], dict):
            raise bad(key, "is not an object")
    data["_path"] = str(path)
    return data


def find_results(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Load every results.json under ``paths``.

    Each path may be a results.json file, a run dir holding results.json, or an
    output dir holding ``*/results.json`` or ``*/*/results.json`` (per-seed output
    dirs ``OUT/seed-<k>/<method>/``, or a folder of output dirs). Each returned dict gets its source file
    under ``_path``. Raises TaskshareError when a path yields no results, or when a
    file is malformed or lacks a required key (the message names the file and key).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files = [p]
        elif (p / "results.json").is_file():
            files = [p / "results.json"]
        elif p.is_dir():
            files = sorted(f for pattern in ("*/results.json", "*/*/results.json") for f in p.glob(pattern)
                           if f.is_file())
        else:
            files = []
        if not files:
            raise TaskshareError(f"no results.json under {p}: run `taskshare run ... --out {p}` first")
        found.extend(files)
    seen: set[Path] = set()
    results = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            results.append(_load(f))
    return results


# ---------------------------------------------------------------- plots

def plot_results(results: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Write PNG plots for ``results`` into ``out_dir`` and return their paths.

    Runs are grouped by (benchmark, method) over seeds. Per lifelong benchmark ``<b>``:
    ``acc_matrix_<b>.png`` (heatmap grid, one panel per method), ``task_accuracy_<b>.png``,
    ``avg_accuracy_<b>.png``, ``params_<b>.png`` and ``acc_vs_params_<b>.png`` (see
    ``results.plots``). Per multi-output benchmark: ``task_metrics_<b>.png`` and, when some run has
    Δm, ``delta_m_<b>.png`` (see ``results.plots_multi``). Files are written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from taskshare.results.plots import lifelong_plots
    from taskshare.results.plots_multi import multitask_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_bench: dict[tuple[bool, str], list] = {}
    for g in group_results(results):
        by_bench.setdefault((g.multitask, g.benchmark), []).append(g)
    written: list[Path] = []
    for (multitask, bench), groups in sorted(by_bench.items()):
        plots = multitask_plots if multitask else lifelong_plots
        written += plots(plt, bench, groups, out, safe_name(bench))
    return written


def report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None,
           markdown: bool = False) -> str:
    """Load results, write plots and return the comparison table(s) plus a line naming the plots.

    The text is the comparison table, then (multi-output runs only) per-benchmark tables of test
    metrics, then (runs chosen with ``--grid``) every candidate setting's validation score, then
    ``wrote N plots to DIR: ...``, separated by blank lines. ``out_dir`` defaults to the first path if it is a
    directory, else its parent. ``markdown``: the tables as Markdown (for a README).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    results = find_results(paths)
    if out_dir is None:
        first = Path(paths[0])
        out_dir = first.parent if first.is_file() else first
    written = plot_results(results, out_dir)
    tables = [f(results, markdown=markdown) for f in (comparison_table, task_metrics_tables, selection_table)]
    names = ", ".join(p.name for p in written)
    return "\n\n".join(t for t in tables if t) + f"\n\nwrote {len(written)} plots to {out_dir}: {names}"
