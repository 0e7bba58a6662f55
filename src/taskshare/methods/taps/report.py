"""TAPS reporting: which layers each task made task-specific and what fraction of parameters it adds.

Definitions (they differ from the official VisualizeLayers notebook, spec §3, whose denominator also holds
the old 1000-class classifier and whose numerator leaves out the downsample BN):

- ``backbone_params``: parameters of the base network without the head: gated weights and biases, one set of
  norm affine parameters, and any other shared parameter (embeddings, ...).
- ``changed_params``: what a task changes in the backbone: its active layers' deltas + its norm affine
  parameters (γ, β). ``fraction_changed = changed_params / backbone_params``.
- ``added_params``: everything the task's artifact adds as parameters: changed_params + one score per gated
  layer + the head. BN running statistics (``norm_buffers``) are state, counted apart.

`plot_layers` draws the paper's Fig. 3 for any network: one row per task, one column per gated layer in
network order (input left, classifier right), task-specific layers coloured, shared ones pale; a lower panel
gives each layer's size, since a few late layers usually hold most of the weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskshare.core.serialize import save_figure
from taskshare.methods.blocks.gating import active_layers, gated_layers, layer_sizes, scores, task_tensors as _tt

__all__ = ["layer_table", "task_summary", "summary", "format_summary", "plot_layers"]


def layer_table(source, task: str) -> list[dict[str, Any]]:
    """One row per gated layer: name, type, parameters (weight + bias), score, active."""
    tt = _tt(source)
    sizes = layer_sizes(tt.model)
    sc = scores(tt, task)
    active = set(active_layers(tt, task))
    return [{"layer": n, "type": m._taps_base.__name__, "params": sizes[n], "score": sc[n], "active": n in active}
            for n, m in gated_layers(tt.model).items()]


def task_summary(source, task: str) -> dict[str, Any]:
    """Active layers and parameter accounting of `task` (see the module docstring)."""
    tt = _tt(source)
    rows = layer_table(tt, task)
    ts = tt.tensors(task)
    gated_leaves = ("delta", "delta_bias", "score")
    norm = [n for n in ts if not n.startswith("head.") and n.rsplit(".", 1)[-1] not in gated_leaves]
    norm_params = sum(ts[n].numel() for n in norm if tt.is_param(n))
    norm_buffers = sum(ts[n].numel() for n in norm if not tt.is_param(n))
    head_params = sum(t.numel() for n, t in ts.items() if n.startswith("head.") and tt.is_param(n))
    delta_params = sum(r["params"] for r in rows if r["active"])
    backbone_params = tt.count_shared() + norm_params
    changed = delta_params + norm_params
    return {
        "task": task,
        "layers": len(rows),
        "active": sum(r["active"] for r in rows),
        "active_layers": [r["layer"] for r in rows if r["active"]],
        "fraction_layers": sum(r["active"] for r in rows) / max(1, len(rows)),
        "delta_params": delta_params,
        "norm_params": norm_params,
        "norm_buffers": norm_buffers,
        "head_params": head_params,
        "score_params": len(rows),
        "backbone_params": backbone_params,
        "changed_params": changed,
        "fraction_changed": changed / max(1, backbone_params),
        "added_params": changed + len(rows) + head_params,
    }


def summary(source, tasks: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    tt = _tt(source)
    return {t: task_summary(tt, t) for t in (tt.tasks if tasks is None else tasks)}


def format_summary(summaries: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: task, active layers, % of backbone parameters changed, parameters added."""
    lines = [f"{'task':<20} {'active layers':>14} {'% changed':>10} {'added params':>13}"]
    for s in summaries.values():
        lines.append(f"{s['task']:<20} {s['active']:>6}/{s['layers']:<7} {100 * s['fraction_changed']:>9.2f}% "
                     f"{s['added_params']:>13,}")
    return "\n".join(lines)


def plot_layers(source, path: str | Path, tasks: Sequence[str] | None = None, title: str | None = None) -> Path:
    """PNG of the task-specific layers per task (rows) across the gated layers (columns); atomic write."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    tt = _tt(source)
    tasks = list(tt.tasks if tasks is None else tasks)
    names = list(gated_layers(tt.model))
    sizes = layer_sizes(tt.model)
    stats = summary(tt, tasks)
    grid = [[1.0 if n in set(stats[t]["active_layers"]) else 0.0 for n in names] for t in tasks]

    width = min(18.0, 3.0 + 0.22 * len(names))
    fig = Figure(figsize=(width, 1.6 + 0.4 * len(tasks) + 1.4))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [max(1, len(tasks)), 2]})
    top.imshow(grid, aspect="auto", cmap=ListedColormap(["#f3e79b", "#3b4cc0"]), vmin=0, vmax=1,
               interpolation="nearest")
    top.set_yticks(range(len(tasks)))
    top.set_yticklabels([f"{t} ({stats[t]['active']}/{len(names)}, {100 * stats[t]['fraction_changed']:.1f}%)"
                         for t in tasks], fontsize=8)
    top.set_title(title or "task-specific layers (dark) vs shared with the base (pale)", fontsize=9)
    bottom.bar(range(len(names)), [sizes[n] for n in names], color="#777777")
    bottom.set_yscale("log")
    bottom.set_ylabel("layer params", fontsize=8)
    bottom.set_xlabel("gated layer (input → classifier)", fontsize=8)
    if len(names) <= 60:
        bottom.set_xticks(range(len(names)))
        bottom.set_xticklabels(names, rotation=90, fontsize=6)
    return save_figure(fig, path)
