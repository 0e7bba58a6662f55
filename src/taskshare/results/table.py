"""Comparison tables: one row per (benchmark, method), mean ± sample std over its seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from taskshare.results.groups import Group, Stat, fmt_number, group_results, is_number, stat

__all__ = ["comparison_table", "human_bytes", "render", "selection_table", "task_metrics_tables"]


def human_bytes(n: float) -> str:
    """Decimal units: 999 B, 12.3 KB, 4.5 MB, ..."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000.0
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _mean_std(s: Stat, decimals: int = 2, sign: bool = False, scale: float = 1.0) -> str:
    """``mean ± std`` (the std of the seeds, n-1); just the mean for one seed; ``-`` when no run has it."""
    if s.mean is None:
        return "-"
    text = fmt_number(s.mean * scale, decimals, sign)
    return text if s.std is None else f"{text} ± {fmt_number(s.std * scale, decimals)}"


def _size(s: Stat, fmt: Callable[[float], str]) -> str:
    """Sizes are the same for every seed as a rule: the mean, with ``± std`` only where seeds differ."""
    if s.mean is None:
        return "-"
    return fmt(s.mean) if not s.varies else f"{fmt(s.mean)} ± {fmt(s.std)}"


def _count(x: float) -> str:
    return fmt_number(x, 0, grouping=True)


def _added(r: dict) -> list:
    p = r.get("params")
    return (p.get("added_per_task") or []) if isinstance(p, dict) else []


def _params_total(r: dict):
    p = r.get("params")
    return p.get("total") if isinstance(p, dict) else None


def _first_added(r: dict):
    a = _added(r)
    return a[0] if a else None


def _rest_added(r: dict):
    return stat(_added(r)[1:]).mean


def _artifact_mean(r: dict):
    ab = r.get("artifact_bytes")
    return stat(ab.values()).mean if isinstance(ab, dict) else None


# (header, cell, key): a column with a key appears only when some run has a value under that key
_COLUMNS: list[tuple[str, Callable[[Group], str], str | None]] = [
    ("avg acc (%)", lambda g: _mean_std(g.key("avg_acc"), scale=100), None),
    ("BWT (pts)", lambda g: _mean_std(g.key("bwt"), sign=True, scale=100), None),
    ("forget (pts)", lambda g: _mean_std(g.key("forgetting"), scale=100), None),
    ("FWT (pts)", lambda g: _mean_std(g.key("fwt"), sign=True, scale=100), "fwt"),
    ("params total", lambda g: _size(g.stat(_params_total), _count), None),
    ("new params task 1", lambda g: _size(g.stat(_first_added), _count), None),
    ("new params/task 2.. (mean)", lambda g: _size(g.stat(_rest_added), _count), None),
    ("artifact/task", lambda g: _size(g.stat(_artifact_mean), human_bytes), None),
    ("time (s)", lambda g: _mean_std(g.key("time_s"), decimals=1), None),
    ("peak RSS (MB)", lambda g: _mean_std(g.key("peak_rss_mb"), decimals=1), None),
    ("delta_m (%)", lambda g: _mean_std(g.key("delta_m"), sign=True), "delta_m"),
]


def render(header: list[str], rows: list[list[str]], left: int = 2, text_last: bool = False,
           markdown: bool = False) -> str:
    """Aligned plain text (or a Markdown table): the first ``left`` columns (and the last, with ``text_last``)
    left-aligned, the rest right-aligned."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    lefts = set(range(left)) | ({len(widths) - 1} if text_last else set())
    if markdown:
        align = [":--" if k in lefts else "--:" for k in range(len(widths))]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
                         for cells in [header, align, *rows])

    def line(cells):
        padded = (c.ljust(w) if k in lefts else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _duplicate_seed_notes(groups: list[Group]) -> list[str]:
    notes = []
    for g in groups:
        seeds = [s for s in g.seeds if s is not None]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            notes.append(f"note: {g.benchmark} / {g.label}: seed {', '.join(map(str, dup))} appears more than once "
                         f"(copies of one run?); each copy counts in mean, std and 'seeds'")
    return notes


def comparison_table(results: Sequence[dict], markdown: bool = False) -> str:
    """Plain-text aligned table, one row per (benchmark, method) over its seeds, sorted by benchmark then method.

    ``seeds`` is the number of runs averaged; each metric shows ``mean ± std`` (sample std, n-1) over them,
    or the value alone for one run. Accuracies are in percent, BWT, FWT and forgetting in percentage
    points, byte sizes in decimal units. Parameter counts: ``params total`` (base + all tasks' additions),
    ``new params task 1`` (added for the first task) and ``new params/task 2.. (mean)`` (the mean of
    the later tasks' additions). ``FWT`` and ``delta_m`` columns appear when any run has them. Missing
    or null values are ``-``; a value that rounds to zero is ``0.00``, never ``-0.00``. ``markdown``: a Markdown
    table instead of aligned text (the same for the other tables here). Runs chosen with ``--grid`` add a
    ``chosen on val`` column: the setting picked on validation.
    """
    groups = group_results(results)
    cols = [(h, cell) for h, cell, key in _COLUMNS if key is None or any(g.key(key).n for g in groups)]
    chosen = _chosen_column(groups)
    header = ["benchmark", "method"] + chosen + ["seeds"] + [h for h, _ in cols]
    rows = [[g.benchmark, g.label] + [_chosen(g) for _ in chosen] + [str(g.n)] + [cell(g) for _, cell in cols]
            for g in groups]
    return "\n".join([render(header, rows, left=2 + len(chosen), markdown=markdown)] + _duplicate_seed_notes(groups))


def _selection(g: Group) -> dict | None:
    return next((r["selection"] for r in g.runs if isinstance(r.get("selection"), dict)), None)


def _chosen(g: Group) -> str:
    """The setting ``--grid`` chose on validation, ``lr=0.01 ewc.lambda=100``; empty for runs without a grid."""
    chosen = (_selection(g) or {}).get("chosen")
    return _setting_text(chosen) if isinstance(chosen, dict) else ""


def _setting_text(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def _chosen_column(groups: list[Group]) -> list[str]:
    return ["chosen on val"] if any(_chosen(g) for g in groups) else []


def _metric_columns(groups: list[Group]) -> list[tuple[str, str, bool]]:
    """(task, metric, higher is better) in the order the runs list them."""
    cols: dict[tuple[str, str], bool] = {}
    for r in (r for g in groups for r in g.runs):
        hib = r.get("higher_is_better") if isinstance(r.get("higher_is_better"), dict) else {}
        for t, ms in r["task_metrics"].items():
            t_hib = hib.get(t) if isinstance(hib.get(t), dict) else {}
            for m in ms if isinstance(ms, dict) else {}:
                cols.setdefault((t, m), bool(t_hib.get(m, True)))
    return [(t, m, h) for (t, m), h in cols.items()]


def task_metrics_tables(results: Sequence[dict], markdown: bool = False) -> str:
    """Multi-output runs: per benchmark, each task's test metrics as ``mean ± std`` over seeds, and Δm.

    Arrows say which way is better (↑ higher, ↓ lower). Empty when no run is multi-output.
    """
    by_bench: dict[str, list[Group]] = {}
    for g in group_results(results):
        if g.multitask:
            by_bench.setdefault(g.benchmark, []).append(g)
    out = []
    for bench, groups in by_bench.items():
        cols = _metric_columns(groups)
        chosen = _chosen_column(groups)
        header = ["method"] + chosen + ["seeds"] + [f"{t} {m} {'↑' if hib else '↓'}" for t, m, hib in cols] \
            + ["Δm (%)"]
        rows = []
        for g in groups:
            cells = [_mean_std(g.stat(lambda r, t=t, m=m: (r["task_metrics"].get(t) or {}).get(m)), decimals=4)
                     for t, m, _ in cols]
            rows.append([g.label] + [_chosen(g) for _ in chosen] + [str(g.n)] + cells
                        + [_mean_std(g.key("delta_m"), sign=True)])
        out.append(f"{bench}: test metrics at the selected epoch\n{_gap(markdown)}"
                   + render(header, rows, left=1 + len(chosen), markdown=markdown))
    return "\n\n".join(out)


# results.json "selection" (engine.grid): the score each candidate setting was ranked by, and how to print it
_SCORES = {"val_avg": ("val acc (%)", 100.0), "val_delta_m": ("val Δm (%)", 1.0)}


def _candidate(entry: dict, chosen: object, keys: list[str]) -> list[str]:
    setting = entry.get("setting") if isinstance(entry.get("setting"), dict) else {}
    cells = [_setting_text(setting) or "defaults"]
    cells += [fmt_number(entry[k] * _SCORES[k][1]) if is_number(entry.get(k)) else "" for k in keys]
    error = str(entry.get("error", ""))
    note = "chosen" if setting == chosen else (f"failed: {error.split(':')[0]}" if error else "")
    return cells + [note]


def selection_table(results: Sequence[dict], markdown: bool = False) -> str:
    """Runs chosen on validation (``taskshare run --grid``): every candidate setting of each (benchmark, method)
    with its mean validation score over the seeds, the chosen one marked, failed ones with their error.

    Empty when no run has a ``selection``. Accuracies are in percent; multi-output runs rank by validation Δm.
    """
    candidates = [(g, sel, entry) for g in group_results(results) if (sel := _selection(g))
                  for entry in sel.get("scores", []) if isinstance(entry, dict)]
    if not candidates:
        return ""
    keys = [k for k in _SCORES if any(is_number(entry.get(k)) for _, _, entry in candidates)]
    header = ["benchmark", "method", "setting"] + [_SCORES[k][0] for k in keys] + [""]
    rows = [[g.benchmark, g.label] + _candidate(entry, sel.get("chosen"), keys) for g, sel, entry in candidates]
    title = f"settings chosen on validation (mean over the seeds; the test split is not used):\n{_gap(markdown)}"
    return title + render(header, rows, left=3, text_last=True, markdown=markdown)


def _gap(markdown: bool) -> str:
    return "\n" if markdown else ""  # Markdown needs a blank line between a title and its table
