"""The report over several seeds: grouping, mean ± std, formatting, plot files, zoomed and log axes."""

import json
import math
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from taskshare.results.groups import fmt_number, group_results
from taskshare.results.plots import (
    acc_vs_params_points,
    draw_acc_vs_params,
    draw_params,
    mean_curve,
    mean_matrix,
    zoomed_limits,
)
from taskshare.results.plots_multi import delta_m_points, task_metric_points
from taskshare.results.report import find_results, plot_results, report
from taskshare.results.table import comparison_table, task_metrics_tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def lifelong(method="ewc", seed=0, acc=0.8, bwt=-0.02, benchmark="split", **over):
    r = {
        "benchmark": benchmark, "method": method, "seed": seed, "tasks": ["t0", "t1"],
        "acc_matrix": [[acc, None], [acc, acc]], "avg_acc": acc, "bwt": bwt, "fwt": None, "forgetting": 0.01,
        "params": {"base": 1000, "added_per_task": [100, 300, 500], "total": 1900},
        "artifact_bytes": {"t0": 1000, "t1": 3000}, "time_s": 10.0 + seed, "peak_rss_mb": 300.0,
        "config": {"lr": 0.1, "seed": seed, "device": "cpu"}, "versions": {"torch": "2.13.0"},
    }
    r.update(over)
    return r


def multi(method="ew", seed=0, t0=0.9, mse=2.0, dm=1.5, benchmark="mt"):
    return {
        "benchmark": benchmark, "method": method, "seed": seed, "tasks": ["a", "b"], "acc_matrix": None,
        "avg_acc": None, "bwt": None, "fwt": None, "forgetting": None,
        "task_metrics": {"a": {"acc": t0}, "b": {"mse": mse}},
        "higher_is_better": {"a": {"acc": True}, "b": {"mse": False}},
        "delta_m": dm, "params": {"base": 50, "added_per_task": [5, 5], "total": 60},
        "artifact_bytes": {"a": 10, "b": 10}, "time_s": 1.0, "peak_rss_mb": 100.0,
        "config": {"seed": seed}, "versions": {},
    }


def three_seeds(**over):
    return [lifelong(seed=s, acc=a, bwt=b, **over) for s, a, b in ((0, 0.80, -0.01), (1, 0.82, -0.02),
                                                                   (2, 0.84, -0.03))]


def _write(root: Path, r: dict, *parts: str) -> Path:
    d = root.joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(r))
    return d / "results.json"


def _row(table: str, method: str) -> str:
    return next(line for line in table.splitlines()[2:] if line.split()[1] == method)


# ------------------------------------------------------------------ grouping and the table

def test_three_seeds_make_one_row_with_mean_and_sample_std():
    groups = group_results(three_seeds())
    assert len(groups) == 1 and groups[0].n == 3 and groups[0].seeds == [0, 1, 2]
    s = groups[0].key("avg_acc")
    assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)  # sample std (n-1), not 0.0163
    table = comparison_table(three_seeds())
    lines = table.splitlines()
    assert len(lines) == 3
    header = [h.strip() for h in lines[0].split("  ") if h.strip()]
    cells = [c.strip() for c in lines[2].split("  ") if c.strip()]
    row = dict(zip(header, cells))
    assert row["seeds"] == "3"
    assert row["avg acc (%)"] == "82.00 ± 2.00"
    assert row["BWT (pts)"] == "-2.00 ± 1.00"
    assert row["forget (pts)"] == "1.00 ± 0.00"
    assert row["time (s)"] == "11.0 ± 1.0"
    assert row["peak RSS (MB)"] == "300.0 ± 0.0"
    # sizes are equal across seeds: the value alone
    assert row["params total"] == "1,900" and row["artifact/task"] == "2.0 KB"


def test_parameter_columns_are_labelled_first_and_later_tasks():
    taps = lifelong(method="taps", params={"base": 0, "added_per_task": [804, 475204, 475204, 475210],
                                           "total": 1426422})
    header, _, row = comparison_table([taps]).splitlines()
    cols = [h.strip() for h in header.split("  ") if h.strip()]
    cells = [c.strip() for c in row.split("  ") if c.strip()]
    got = dict(zip(cols, cells))
    assert got["params total"] == "1,426,422"
    assert got["new params task 1"] == "804"
    assert got["new params/task 2.. (mean)"] == "475,206"
    assert got["seeds"] == "1" and got["avg acc (%)"] == "80.00"  # one seed: the value, no ±


def test_rows_sorted_by_benchmark_then_method_and_configs_kept_apart():
    rs = [lifelong(method="pnn", benchmark="b"), lifelong(method="finetune", benchmark="b", acc=0.99),
          lifelong(method="ewc", benchmark="a", seed=0), lifelong(method="ewc", benchmark="a", seed=1),
          lifelong(method="ewc", benchmark="a", config={"lr": 0.01, "seed": 0})]
    lines = comparison_table(rs).splitlines()[2:]
    assert [(ln.split()[0], " ".join(ln.split()[1:3])) for ln in lines] == [
        ("a", "ewc [lr=0.01]"), ("a", "ewc [lr=0.1]"), ("b", "finetune 1"), ("b", "pnn 1")]
    assert lines[1].split()[3] == "2"  # the two lr=0.1 seeds are one row; lr=0.01 is not mixed in


def test_duplicate_seed_is_noted():
    rs = [lifelong(seed=0, _path="a/results.json"), lifelong(seed=0, _path="b/results.json")]
    table = comparison_table(rs)
    assert table.splitlines()[-1].startswith("note: split / ewc: seed 0 appears more than once")


def test_never_negative_zero():
    assert fmt_number(-0.0001) == "0.00" and fmt_number(-0.0) == "0.00"
    assert fmt_number(-0.004, sign=True) == "0.00" and fmt_number(0.004, sign=True) == "0.00"
    assert fmt_number(-0.006, sign=True) == "-0.01" and fmt_number(0.5, 0, grouping=True) == "0"
    rs = [lifelong(seed=s, bwt=b, fwt=f, delta_m=d) for s, b, f, d in
          ((0, -1e-6, -2e-6, -0.001), (1, -3e-6, 1e-7, -0.002), (2, 0.0, -0.0, -0.0))]
    rs += [multi(seed=s, dm=-0.001 * s, t0=-0.00001) for s in (0, 1)]
    text = comparison_table(rs) + task_metrics_tables(rs)
    assert "-0.00" not in text and "-0.0 " not in text and "+0.00" not in text
    assert "0.00 ± 0.00" in text


def test_task_metrics_table_for_multi_output_runs():
    rs = [multi(seed=0, t0=0.90, mse=2.0, dm=1.0), multi(seed=1, t0=0.92, mse=4.0, dm=3.0),
          multi(method="stl", dm=None, t0=0.91, mse=3.0)]
    text = task_metrics_tables(rs)
    lines = text.splitlines()
    assert lines[0] == "mt: test metrics at the selected epoch"
    assert lines[1].split() == ["method", "seeds", "a", "acc", "↑", "b", "mse", "↓", "Δm", "(%)"]
    assert lines[3].split() == ["ew", "2", "0.9100", "±", "0.0141", "3.0000", "±", "1.4142", "+2.00", "±", "1.41"]
    assert lines[4].split() == ["stl", "1", "0.9100", "3.0000", "-"]
    assert task_metrics_tables([lifelong()]) == ""


# ------------------------------------------------------------------ finding per-seed folders

def test_find_results_reads_per_seed_output_folders(tmp_path):
    for s in (0, 1, 2):
        for m in ("ewc", "finetune"):
            _write(tmp_path, lifelong(method=m, seed=s), f"seed-{s}", m)
    found = find_results([tmp_path])
    assert sorted((r["method"], r["seed"]) for r in found) == [(m, s) for m in ("ewc", "finetune") for s in range(3)]
    assert [g.n for g in group_results(found)] == [3, 3]


# ------------------------------------------------------------------ plot data and axes

def test_mean_matrix_and_curve_over_seeds():
    g = group_results(three_seeds())[0]
    M = mean_matrix(g)
    assert M[0][1] == (None, None)
    assert M[1][0][0] == pytest.approx(0.82) and M[1][0][1] == pytest.approx(0.02)
    curve = mean_curve(g)
    assert [m for m, _ in curve] == pytest.approx([0.82, 0.82]) and curve[1][1] == pytest.approx(0.02)


def test_zoomed_limits():
    lo, hi = zoomed_limits([94.0, 96.5, 100.0])
    assert lo < 94.0 and hi > 100.0  # the data are inside, with padding
    assert lo > 90.0 and hi <= 101.0 and hi - lo < 100.0  # much narrower than 0-100
    assert zoomed_limits([0.0, 100.0]) == (-1.0, 101.0)  # bounds (+1% slack) cap the padding
    lo, hi = zoomed_limits([50.0, 50.0])  # one value: the minimum span around it
    assert lo < 50.0 < hi and hi - lo == pytest.approx(1.0 * 1.16)
    assert zoomed_limits([None, math.nan]) == (0.0, 100.0)
    lo, hi = zoomed_limits([1000.0, 1001.0], bounds=None, min_span=None)  # no bounds: unclipped
    assert lo < 1000.0 and hi > 1001.0 and hi - lo < 30


def test_acc_vs_params_points_and_log_axis():
    rs = three_seeds() + [lifelong(method="expert", seed=s, acc=a, params={"base": 0, "added_per_task": [5000, 5000],
                                                                           "total": 10000}) for s, a in
                          ((0, 0.95), (1, 0.97), (2, 0.99))]
    pts = acc_vs_params_points(group_results(rs))
    assert [p["label"] for p in pts] == ["ewc", "expert"]
    assert pts[0]["params"] == pytest.approx(950.0) and pts[0]["params_std"] == 0.0  # 1900 params / 2 tasks
    assert pts[1]["params"] == pytest.approx(5000.0)
    assert pts[1]["acc"] == pytest.approx(97.0) and pts[1]["acc_std"] == pytest.approx(2.0) and pts[1]["n"] == 3
    ax = Figure().add_subplot()
    draw_acc_vs_params(ax, pts)
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    assert lo < 950.0 and hi > 5000.0
    ylo, yhi = ax.get_ylim()
    assert ylo < 80.0 and yhi > 99.0 and yhi - ylo < 40.0  # error bars inside, zoomed (data span 80-99)


def test_accuracy_axes_zoom_when_data_lie_in_94_to_100():
    rs = [lifelong(seed=s, acc=a) for s, a in ((0, 0.94), (1, 0.97), (2, 1.0))]
    ax = Figure().add_subplot()
    draw_acc_vs_params(ax, acc_vs_params_points(group_results(rs)))
    lo, hi = ax.get_ylim()
    assert lo < 94.0 and hi > 100.0 and lo > 85.0 and hi <= 101.0


def test_params_axis_starts_at_zero_without_offset():
    rs = [lifelong(params={"base": 1_000_000, "added_per_task": [8500, 8500], "total": 1_017_000})]
    fig = Figure()
    ax = fig.add_subplot()
    draw_params(ax, group_results(rs))
    FigureCanvasAgg(fig).draw()
    assert ax.get_ylim()[0] == 0.0
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[1_008_500, 1_017_000]]
    assert ax.yaxis.get_major_formatter()(1_017_000, 0) == "1,017,000"  # plain numbers, not 1.017e6
    assert ax.yaxis.get_offset_text().get_text() == ""  # no "+1e6" offset that would make 1.7% look steep
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "0" in labels and all("e" not in t for t in labels)


def test_multi_output_plot_data():
    rs = [multi(seed=0, mse=2.0, dm=1.0), multi(seed=1, mse=4.0, dm=3.0), multi(method="stl", dm=None)]
    groups = group_results(rs)
    panels = task_metric_points(groups)
    assert [(p["task"], p["metric"], p["higher_is_better"]) for p in panels] == [("a", "acc", True),
                                                                                ("b", "mse", False)]
    ew = panels[1]["methods"][0]
    assert (ew["label"], ew["n"], ew["mean"]) == ("ew", 2, 3.0) and ew["std"] == pytest.approx(math.sqrt(2))
    assert [p["label"] for p in delta_m_points(groups)] == ["ew"]  # stl has no Δm


# ------------------------------------------------------------------ plot files

def test_plot_files_for_lifelong_seeds_and_multi_output(tmp_path):
    rs = three_seeds() + [lifelong(method="finetune", seed=s) for s in (0, 1)]
    rs += [multi(seed=s) for s in (0, 1)] + [multi(method="stl", dm=None)]
    rs += [multi(benchmark="mt2", dm=None)]  # no Δm anywhere: no delta_m plot for it
    files = plot_results(rs, tmp_path / "plots")
    assert [p.name for p in files] == [
        "acc_matrix_split.png", "task_accuracy_split.png", "avg_accuracy_split.png", "params_split.png",
        "acc_vs_params_split.png", "task_metrics_mt.png", "delta_m_mt.png", "task_metrics_mt2.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in files)
    for p in files:
        assert p.read_bytes()[:8] == PNG_SIGNATURE


def test_report_over_seed_folders(tmp_path):
    for s, (a, b) in enumerate(((0.80, -0.01), (0.82, -0.02), (0.84, -0.03))):
        _write(tmp_path, lifelong(seed=s, acc=a, bwt=b), f"seed-{s}", "ewc")
        _write(tmp_path, multi(seed=s, dm=1.0 + s), f"seed-{s}", "ew")
    text = report([tmp_path])
    table, mt, wrote = text.split("\n\n")
    assert "82.00 ± 2.00" in _row(table, "ewc") and _row(table, "ewc").split()[2] == "3"
    assert "+2.00 ± 1.00" in _row(table, "ew")
    assert mt.startswith("mt: test metrics")
    assert wrote.startswith(f"wrote 7 plots to {tmp_path}: acc_matrix_split.png, ")
