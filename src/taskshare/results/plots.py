"""PNG plots of lifelong runs, one set per benchmark, each method a mean over its seeds.

Per benchmark: ``acc_matrix_<b>.png`` (a grid of accuracy-matrix heatmaps, one panel per method),
``task_accuracy_<b>.png`` (each task's accuracy along the stream, one panel per method),
``avg_accuracy_<b>.png`` (average accuracy after each task: mean line, ±std band over seeds),
``params_<b>.png`` (total parameters along the stream, plain numbers from 0) and
``acc_vs_params_<b>.png`` (final average accuracy against parameters per task, log x, error bars
over seeds). Accuracy axes are zoomed to the data (``zoomed_limits``), not fixed to 0-100%.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from taskshare.core.serialize import save_figure
from taskshare.results.groups import Group, is_number, stat
from taskshare.results.metrics import average_accuracy_curve, validate_matrix

__all__ = ["acc_vs_params_points", "draw_acc_vs_params", "draw_params", "lifelong_plots", "mean_curve", "subplot_grid",
           "mean_matrix", "zoomed_limits"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def zoomed_limits(values: Iterable, bounds: tuple[float, float] | None = (0.0, 100.0), pad_frac: float = 0.08,
                  min_span: float | None = 1.0) -> tuple[float, float]:
    """Axis limits around ``values`` padded by ``pad_frac`` of their span, kept within ``bounds`` (+1% slack).

    ``min_span`` widens a too-narrow range around its centre (default: 1 point for percentages; None:
    2% of the largest magnitude). Nulls and non-finite values are ignored; no values give ``bounds``.
    """
    vs = [float(v) for v in values if is_number(v)]
    if not vs:
        return bounds if bounds is not None else (0.0, 1.0)
    lo, hi = min(vs), max(vs)
    floor = min_span if min_span is not None else 0.02 * max(abs(lo), abs(hi))
    span = max(hi - lo, floor, 1e-9)
    extra = (span - (hi - lo)) / 2
    lo, hi = lo - extra - pad_frac * span, hi + extra + pad_frac * span
    if bounds is not None:
        slack = 0.01 * (bounds[1] - bounds[0])
        lo, hi = max(lo, bounds[0] - slack), min(hi, bounds[1] + slack)
    return lo, hi


def _matrix(r: dict) -> list[list[float | None]]:
    return validate_matrix(r["acc_matrix"])


def mean_matrix(g: Group) -> list[list[tuple[float | None, float | None]]]:
    """Element-wise (mean, std) over the seeds of the accuracy matrices (fractions); (None, None) if never evaluated."""
    ms = [_matrix(r) for r in g.runs]
    T = len(ms[0])
    ms = [m for m in ms if len(m) == T]
    cells = [[stat(m[i][j] for m in ms) for j in range(T)] for i in range(T)]
    return [[(c.mean, c.std) for c in row] for row in cells]


def mean_curve(g: Group) -> list[tuple[float | None, float | None]]:
    """(mean, std) over seeds of the average accuracy on the tasks seen so far, after each task (fractions)."""
    curves = [average_accuracy_curve(r["acc_matrix"]) for r in g.runs]
    T = max(map(len, curves))
    out = []
    for i in range(T):
        s = stat(c[i] for c in curves if i < len(c))
        out.append((s.mean, s.std))
    return out


def _with_band(ax, xs, means, stds, color, label, marker="o", scale=100.0) -> list[float]:
    """Plot a mean line with a ±std band where there are stds; returns the plotted y extent for zooming."""
    pts = [(x, m, s) for x, m, s in zip(xs, means, stds) if m is not None]
    if not pts:
        return []
    x, m = [p[0] for p in pts], [scale * p[1] for p in pts]
    ax.plot(x, m, marker=marker, ms=4, color=color, label=label)
    s = [scale * (p[2] or 0.0) for p in pts]
    if any(p[2] is not None for p in pts):
        ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color=color, alpha=0.2,
                        lw=0)
    return [a - b for a, b in zip(m, s)] + [a + b for a, b in zip(m, s)]


def _seeds_text(g: Group) -> str:
    return f"seed {g.seeds[0]}" if g.n == 1 else f"mean of {g.n} seeds"


def subplot_grid(plt, n: int, w: float, h: float, **kw):
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, **kw)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, axes


def _heatmaps(plt, bench: str, groups: list[Group], path: Path) -> Path:
    import numpy as np

    means = [np.array([[np.nan if c[0] is None else 100 * c[0] for c in row] for row in mean_matrix(g)])
             for g in groups]
    vmin, vmax = zoomed_limits(v for a in means for v in a.flat if not math.isnan(v))
    T = max(len(a) for a in means)
    side = min(2.2 + 0.45 * T, 7)
    fig, axes = subplot_grid(plt, len(groups), side + 0.6, side)
    try:
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        for ax, g, a in zip(axes.flat, groups, means):
            im = ax.imshow(np.ma.masked_invalid(a), cmap=cmap, vmin=vmin, vmax=vmax)
            n = len(a)
            if n <= 12:
                for i, j in zip(*np.nonzero(~np.isnan(a))):
                    light = (a[i, j] - vmin) / max(vmax - vmin, 1e-9) > 0.6
                    ax.text(j, i, format(a[i, j], ".1f" if n <= 8 else ".0f"), ha="center", va="center",
                            fontsize=max(5, min(9, 90 // n)), color="black" if light else "white")
            tasks = list(g.runs[0].get("tasks") or range(n))
            ax.set_xticks(range(n), [str(t) for t in tasks], rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(n), [str(t) for t in tasks], fontsize=7)
            ax.set_title(f"{g.label} ({_seeds_text(g)})", fontsize=10)
        for ax in axes[:, 0]:
            ax.set_ylabel("after training")
        for ax in axes[-1, :]:
            ax.set_xlabel("evaluated on")
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="test accuracy (%)")
        fig.suptitle(f"{bench}: accuracy matrix per method (colour scale zoomed to the data)")
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _task_accuracy(plt, bench: str, groups: list[Group], path: Path) -> Path:
    fig, axes = subplot_grid(plt, len(groups), 4.8, 3.6, sharey=True)
    try:
        extent: list[float] = []
        for ax, g in zip(axes.flat, groups):
            M = mean_matrix(g)
            T = len(M)
            tasks = list(g.runs[0].get("tasks") or [str(j) for j in range(T)])
            colors = plt.get_cmap("tab10" if T <= 10 else "viridis")
            for j in range(T):
                c = colors(j % 10) if T <= 10 else colors(j / max(T - 1, 1))
                extent += _with_band(ax, [i + 1 for i in range(j, T)], [M[i][j][0] for i in range(j, T)],
                                     [M[i][j][1] for i in range(j, T)], c, tasks[j], marker="o")
            ax.set_title(f"{g.label} ({_seeds_text(g)})", fontsize=10)
            ax.set_xlabel("after training task #")
            ax.set_xticks(range(1, T + 1))
            ax.grid(alpha=0.3)
            if T <= 12:
                ax.legend(fontsize=7, title="task", title_fontsize=7, loc="lower left")
        axes[0, 0].set_ylim(*zoomed_limits(extent))
        for ax in axes[:, 0]:
            ax.set_ylabel("task test accuracy (%)")
        fig.suptitle(f"{bench}: accuracy of each task along the stream (band: ±std over seeds)")
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _colors(plt, groups: list[Group]) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(k % 10) for k in range(len(groups))]


def _avg_accuracy(plt, bench: str, groups: list[Group], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    try:
        extent: list[float] = []
        for k, (g, c) in enumerate(zip(groups, _colors(plt, groups))):
            curve = mean_curve(g)
            extent += _with_band(ax, range(1, len(curve) + 1), [m for m, _ in curve], [s for _, s in curve], c,
                                 f"{g.label} (n={g.n})", marker=_MARKERS[k % len(_MARKERS)])
        ax.set_ylim(*zoomed_limits(extent))
        ax.set_title(f"{bench}: average accuracy on the tasks seen so far (band: ±std over seeds)", fontsize=10)
        ax.set_xlabel("after training task #")
        ax.set_ylabel("average test accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _cumulative_params(r: dict) -> list[float]:
    p = r["params"]
    out, total = [], p["base"]
    for added in p["added_per_task"]:
        total += added
        out.append(total)
    return out


def draw_params(ax, groups: Sequence[Group], colors: Sequence | None = None) -> None:
    """Total parameters after each task (mean over seeds), y from 0 with plain ``1,234,567`` tick labels.

    No offset or scientific notation: a 1.7% growth looks like 1.7%, not like a steep climb.
    """
    from matplotlib.ticker import FuncFormatter

    for k, g in enumerate(groups):
        curves = [_cumulative_params(r) for r in g.runs]
        T = max(map(len, curves))
        ys = [stat(c[i] for c in curves if i < len(c)).mean for i in range(T)]
        if ys:
            ax.plot(range(1, T + 1), ys, marker=_MARKERS[k % len(_MARKERS)], ms=4, label=g.label,
                    ls=("-", "--", ":", "-.")[k % 4], color=None if colors is None else colors[k])
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("after training task #")
    ax.set_ylabel("total parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _params(plt, bench: str, groups: list[Group], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    try:
        draw_params(ax, groups, _colors(plt, groups))
        ax.set_title(f"{bench}: parameters along the stream (base + every task's additions)", fontsize=10)
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def acc_vs_params_points(groups: Sequence[Group]) -> list[dict]:
    """Per group: ``params`` = total parameters / number of tasks and ``acc`` = final average accuracy (%),
    each as mean and sample std over seeds (std None for one seed), plus ``label`` and ``n``."""
    pts = []
    for g in groups:
        per_task = g.stat(lambda r: r["params"]["total"] / len(r["tasks"]) if r.get("tasks") else None)
        acc = g.key("avg_acc")
        if per_task.mean is None or acc.mean is None or per_task.mean <= 0:
            continue
        pts.append({"label": g.label, "n": g.n, "params": per_task.mean, "params_std": per_task.std,
                    "acc": 100 * acc.mean, "acc_std": None if acc.std is None else 100 * acc.std})
    return pts


def draw_acc_vs_params(ax, points: Sequence[dict], colors: Sequence | None = None) -> None:
    """One point per method, error bars = ±std over seeds; x log scale, y zoomed to the points."""
    extent: list[float] = []
    for k, p in enumerate(points):
        yerr, xerr = p["acc_std"] or 0.0, p["params_std"] or 0.0
        ax.errorbar([p["params"]], [p["acc"]], yerr=[yerr], xerr=[xerr] if xerr else None, fmt=_MARKERS[k % 8],
                    ms=7, capsize=3, label=f"{p['label']} (n={p['n']})", color=None if colors is None else colors[k])
        extent += [p["acc"] - yerr, p["acc"] + yerr]
    ax.set_xscale("log")
    if points:  # a little room either side of the extreme points, in log space
        xs = [p["params"] for p in points]
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
    ax.set_ylim(*zoomed_limits(extent))
    ax.set_xlabel("parameters per task (total / number of tasks, log scale)")
    ax.set_ylabel("final average accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    if points:
        ax.legend(fontsize=8)


def _acc_vs_params(plt, bench: str, groups: list[Group], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    try:
        points = acc_vs_params_points(groups)
        color = dict(zip((g.label for g in groups), _colors(plt, groups)))
        draw_acc_vs_params(ax, points, [color[p["label"]] for p in points])
        ax.set_title(f"{bench}: accuracy vs parameters per task (error bars: ±std over seeds)", fontsize=10)
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def lifelong_plots(plt, bench: str, groups: list[Group], out: Path, stem: str) -> list[Path]:
    """The five lifelong PNGs of one benchmark, named ``<kind>_<stem>.png``."""
    return [_heatmaps(plt, bench, groups, out / f"acc_matrix_{stem}.png"),
            _task_accuracy(plt, bench, groups, out / f"task_accuracy_{stem}.png"),
            _avg_accuracy(plt, bench, groups, out / f"avg_accuracy_{stem}.png"),
            _params(plt, bench, groups, out / f"params_{stem}.png"),
            _acc_vs_params(plt, bench, groups, out / f"acc_vs_params_{stem}.png")]
