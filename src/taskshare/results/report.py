"""Read ``results.json`` files, print a comparison table and write PNG plots."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from numbers import Real
from pathlib import Path

from taskshare.core.paths import safe_name
from taskshare.core.serialize import save_figure
from taskshare.errors import TaskshareError
from taskshare.results.metrics import average_accuracy_curve, validate_matrix

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
    output dir holding ``*/results.json``. Each returned dict gets its source file
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
            files = sorted(f for f in p.glob("*/results.json") if f.is_file())
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


# ---------------------------------------------------------------- table

def _human_bytes(n: float) -> str:
    """Decimal units: 999 B, 12.3 KB, 4.5 MB, ..."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000.0
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _fmt(x, spec: str, scale: float = 1.0) -> str:
    if x is None or not _is_number(x) or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x * scale if scale != 1.0 else x, spec)


def _mean_or_none(xs) -> float | None:
    xs = [x for x in xs if _is_number(x)]
    return sum(xs) / len(xs) if xs else None


def _sort_key(r: dict):
    acc = r.get("avg_acc")
    acc = acc if _is_number(acc) else -math.inf
    return (str(r.get("benchmark")), -acc, str(r.get("method")), r.get("seed") if _is_number(r.get("seed")) else 0)


def comparison_table(results: Sequence[dict]) -> str:
    """Plain-text aligned table, one row per run, sorted by benchmark then avg acc (descending).

    Accuracies are in percent, BWT and forgetting in percentage points, byte
    sizes in decimal units. A ``delta_m (%)`` column appears when any run has one.
    Missing or null values are shown as ``-``.
    """
    with_dm = any(r.get("delta_m") is not None for r in results)
    header = ["benchmark", "method", "seed", "avg acc (%)", "BWT (pts)", "forget (pts)", "params total",
              "params +/task", "artifact/task", "time (s)", "peak RSS (MB)"]
    if with_dm:
        header.append("delta_m (%)")
    rows = []
    for r in sorted(results, key=_sort_key):
        params = r.get("params") if isinstance(r.get("params"), dict) else {}
        added = _mean_or_none(params.get("added_per_task") or [])
        ab = r.get("artifact_bytes")
        ab_mean = _mean_or_none(ab.values()) if isinstance(ab, dict) else None
        row = [
            str(r.get("benchmark", "-")),
            str(r.get("method", "-")),
            str(r["seed"]) if isinstance(r.get("seed"), int) else "-",
            _fmt(r.get("avg_acc"), ".2f", 100),
            _fmt(r.get("bwt"), "+.2f", 100),
            _fmt(r.get("forgetting"), ".2f", 100),
            _fmt(params.get("total"), ",.0f"),
            _fmt(added, ",.0f"),
            "-" if ab_mean is None else _human_bytes(ab_mean),
            _fmt(r.get("time_s"), ".1f"),
            _fmt(r.get("peak_rss_mb"), ".1f"),
        ]
        if with_dm:
            row.append(_fmt(r.get("delta_m"), "+.2f"))
        rows.append(row)
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    left = {0, 1}  # text columns; numbers are right-aligned

    def line(cells):
        padded = (c.ljust(w) if k in left else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------- plots

def _labels(runs: Sequence[dict]) -> list[str]:
    """Method names, with the seed appended where one method has several runs."""
    methods = [r["method"] for r in runs]
    return [f"{r['method']} (seed {r['seed']})" if methods.count(r["method"]) > 1 else r["method"] for r in runs]


def _heatmap(plt, r: dict, path: Path) -> Path:
    import numpy as np

    R = validate_matrix(r["acc_matrix"])
    T = len(R)
    tasks = list(r.get("tasks") or [str(j) for j in range(T)])
    a = np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float)
    side = min(2.5 + 0.55 * T, 16)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    try:
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        im = ax.imshow(np.ma.masked_invalid(100 * a), cmap=cmap, vmin=0.0, vmax=100.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
        if T <= 25:
            fs = max(6, min(10, 140 // T))
            spec = ".1f" if T <= 10 else ".0f"
            for i in range(T):
                for j in range(T):
                    if not math.isnan(a[i, j]):
                        ax.text(j, i, format(100 * a[i, j], spec), ha="center", va="center", fontsize=fs,
                                color="black" if a[i, j] > 0.6 else "white")
        long_names = max(map(len, tasks)) > 3
        ax.set_xticks(range(T), tasks, rotation=45 if long_names else 0,
                      ha="right" if long_names else "center")
        ax.set_yticks(range(T), tasks)
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("after training")
        ax.set_title(f"{r['benchmark']} / {r['method']} (seed {r['seed']}): accuracy (%)", fontsize=11)
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _task_accuracy(plt, bench: str, runs: list[dict], path: Path) -> Path:
    n = len(runs)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows), squeeze=False,
                             sharey=True)
    try:
        for ax, r, label in zip(axes.flat, runs, _labels(runs)):
            R = validate_matrix(r["acc_matrix"])
            T = len(R)
            tasks = list(r.get("tasks") or [str(j) for j in range(T)])
            for j in range(T):
                xs = [i for i in range(j, T) if R[i][j] is not None]  # rows never evaluated are skipped
                ax.plot([x + 1 for x in xs], [100 * R[i][j] for i in xs], marker="o", ms=3,
                        label=tasks[j])
            ax.set_title(label)
            ax.set_xlabel("after training task #")
            ax.set_xticks(range(1, T + 1))
            ax.set_ylim(0, 102)
            ax.grid(alpha=0.3)
            if T <= 12:
                ax.legend(fontsize=7, title="task", title_fontsize=7, loc="lower left")
        for ax in axes[:, 0]:
            ax.set_ylabel("task accuracy (%)")
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        fig.suptitle(f"{bench}: accuracy of each task along the stream")
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "x")


def _params(plt, bench: str, runs: list[dict], path: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    try:
        for k, (r, label) in enumerate(zip(runs, _labels(runs))):
            # Distinct line styles/markers keep overlapping runs (same params, say) visible.
            style = dict(ls=_LINESTYLES[k % len(_LINESTYLES)], marker=_MARKERS[k % len(_MARKERS)], ms=4,
                         label=label)
            curve = average_accuracy_curve(r["acc_matrix"])
            xs = [i for i, c in enumerate(curve) if c is not None]
            ax1.plot([i + 1 for i in xs], [100 * curve[i] for i in xs], **style)
            p = r["params"]
            cum, total = [], p["base"]
            for added in p["added_per_task"]:
                total += added
                cum.append(total)
            if cum:
                ax2.plot(range(1, len(cum) + 1), cum, **style)
        ax1.set_title("average accuracy on tasks seen so far")
        ax1.set_xlabel("after training task #")
        ax1.set_ylabel("average accuracy (%)")
        ax1.set_ylim(0, 102)
        ax2.set_title("parameters along the stream")
        ax2.set_xlabel("after training task #")
        ax2.set_ylabel("total parameters")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=8)
        fig.suptitle(bench)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_results(results: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Write PNG plots for ``results`` into ``out_dir`` and return their paths.

    Per run: ``acc_matrix_<benchmark>_<method>[_s<seed>].png`` (seed added when a
    method has several runs). Per benchmark: ``task_accuracy_<benchmark>.png``
    (each task's accuracy along the stream, one panel per run) and
    ``params_<benchmark>.png`` (average accuracy and cumulative parameters along
    the stream, all runs overlaid). Files are written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_bench: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["benchmark"], r["method"], r["seed"])):
        if not isinstance(r.get("task_metrics"), dict):  # accuracy-matrix plots are for lifelong runs
            by_bench.setdefault(r["benchmark"], []).append(r)
    written: list[Path] = []
    for bench, runs in by_bench.items():
        methods = [r["method"] for r in runs]
        for r in runs:
            name = f"acc_matrix_{safe_name(bench)}_{safe_name(r['method'])}"
            if methods.count(r["method"]) > 1:
                name += f"_s{r['seed']}"
            written.append(_heatmap(plt, r, out / f"{name}.png"))
        written.append(_task_accuracy(plt, bench, runs, out / f"task_accuracy_{safe_name(bench)}.png"))
        written.append(_params(plt, bench, runs, out / f"params_{safe_name(bench)}.png"))
    return written


def report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> str:
    """Load results, write plots and return the comparison table plus a line naming the plots.

    ``out_dir`` defaults to the first path if it is a directory, else its parent.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    results = find_results(paths)
    if out_dir is None:
        first = Path(paths[0])
        out_dir = first.parent if first.is_file() else first
    written = plot_results(results, out_dir)
    table = comparison_table(results)
    names = ", ".join(p.name for p in written)
    return f"{table}\n\nwrote {len(written)} plots to {out_dir}: {names}"
