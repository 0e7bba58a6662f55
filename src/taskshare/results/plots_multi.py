"""PNG plots of multi-output runs (one input, several task outputs), one set per benchmark.

``task_metrics_<b>.png``: one panel per (task, metric), a point per method at the mean test value
with ±std error bars over seeds (the ``stl`` single-task baseline, when present, also as a dashed
line); the y axis is zoomed to the values. ``delta_m_<b>.png`` (only when some run has Δm): Δm per
method, bars from 0 (= the single-task baseline) with ±std error bars over seeds.
"""

from __future__ import annotations

from pathlib import Path

from taskshare.core.serialize import save_figure
from taskshare.results.groups import Group
from taskshare.results.plots import subplot_grid, zoomed_limits

__all__ = ["delta_m_points", "multitask_plots", "task_metric_points"]


def task_metric_points(groups: list[Group]) -> list[dict]:
    """Per (task, metric) in the runs' order: ``task``, ``metric``, ``higher_is_better`` and ``methods``,
    a list of {label, n, mean, std} (sample std over seeds, None for one seed)."""
    panels: dict[tuple[str, str], dict] = {}
    for g in groups:
        for r in g.runs:
            hib = r.get("higher_is_better") if isinstance(r.get("higher_is_better"), dict) else {}
            for t, ms in r["task_metrics"].items():
                t_hib = hib.get(t) if isinstance(hib.get(t), dict) else {}
                for m in ms if isinstance(ms, dict) else {}:
                    panels.setdefault((t, m), {"task": t, "metric": m, "higher_is_better": bool(t_hib.get(m, True)),
                                               "methods": []})
    for (t, m), panel in panels.items():
        for g in groups:
            s = g.stat(lambda r: (r["task_metrics"].get(t) or {}).get(m))
            if s.mean is not None:
                panel["methods"].append({"label": g.label, "method": g.method, "n": s.n, "mean": s.mean,
                                         "std": s.std})
    return list(panels.values())


def delta_m_points(groups: list[Group]) -> list[dict]:
    """Per group with a Δm: {label, n, mean, std} of ``delta_m`` (percent) over seeds."""
    out = []
    for g in groups:
        s = g.key("delta_m")
        if s.mean is not None:
            out.append({"label": g.label, "n": s.n, "mean": s.mean, "std": s.std})
    return out


def _task_metrics(plt, bench: str, groups: list[Group], path: Path) -> Path:
    panels = task_metric_points(groups)
    fig, axes = subplot_grid(plt, len(panels), max(3.6, 0.9 * len(groups) + 1.5), 3.6)
    cmap = plt.get_cmap("tab10")
    try:
        for ax, p in zip(axes.flat, panels):
            ms = p["methods"]
            for k, m in enumerate(ms):
                ax.errorbar([k], [m["mean"]], yerr=[m["std"] or 0.0], fmt="o", ms=7, capsize=4, color=cmap(k % 10))
            stl = [m for m in ms if m["method"] == "stl"]
            if stl:
                ax.axhline(stl[0]["mean"], ls="--", lw=1, color="gray", label="stl (single-task)")
                ax.legend(fontsize=7)
            ax.set_ylim(*zoomed_limits([m["mean"] + s * (m["std"] or 0.0) for m in ms for s in (-1, 1)],
                                       bounds=None, min_span=None))
            ax.set_xticks(range(len(ms)), [f"{m['label']}\n(n={m['n']})" for m in ms], fontsize=8)
            ax.set_xlim(-0.6, len(ms) - 0.4)
            better = "higher" if p["higher_is_better"] else "lower"
            ax.set_title(f"{p['task']}: test {p['metric']} ({better} is better)", fontsize=10)
            ax.set_ylabel(p["metric"])
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle(f"{bench}: test metrics per method (error bars: ±std over seeds)")
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _delta_m(plt, bench: str, points: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.45 * len(points)))
    try:
        ys = list(range(len(points)))[::-1]
        means = [p["mean"] for p in points]
        stds = [p["std"] or 0.0 for p in points]
        ax.barh(ys, means, xerr=stds if any(stds) else None, capsize=3, color=["tab:green" if m >= 0 else "tab:red" for m in means],
                alpha=0.8)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(ys, [f"{p['label']} (n={p['n']})" for p in points])
        ax.set_xlim(*zoomed_limits([0.0] + [m + s for m, s in zip(means, stds)] + [m - s for m, s in zip(means, stds)],
                                   bounds=None, min_span=0.5))
        ax.set_xlabel("Δm (%) vs single-task baselines (positive = better)")
        ax.set_title(f"{bench}: Δm per method (error bars: ±std over seeds)", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def multitask_plots(plt, bench: str, groups: list[Group], out: Path, stem: str) -> list[Path]:
    """``task_metrics_<stem>.png`` and, when some run has Δm, ``delta_m_<stem>.png``."""
    written = []
    if task_metric_points(groups):
        written.append(_task_metrics(plt, bench, groups, out / f"task_metrics_{stem}.png"))
    points = delta_m_points(groups)
    if points:
        written.append(_delta_m(plt, bench, points, out / f"delta_m_{stem}.png"))
    return written
