"""Loading results.json files, the comparison table and the PNG plots."""

import json
from pathlib import Path

import pytest

from taskshare.errors import TaskshareError
from taskshare.results.report import comparison_table, find_results, plot_results, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_result(benchmark="split_mnist", method="ewc", seed=0, **over):
    r = {
        "benchmark": benchmark,
        "method": method,
        "seed": seed,
        "tasks": ["t0", "t1"],
        "acc_matrix": [[0.9, None], [0.75, 0.875]],
        "avg_acc": 0.8125,
        "bwt": -0.15,
        "fwt": None,
        "forgetting": 0.15,
        "params": {"base": 1000, "added_per_task": [0, 500], "total": 1500},
        "artifact_bytes": {"t0": 12300, "t1": 12300},
        "time_s": 12.34,
        "peak_rss_mb": 512.0,
        "config": {"lr": 0.1},
        "versions": {"torch": "2.13.0"},
    }
    r.update(over)
    return r


def write(out: Path, method: str, data) -> Path:
    d = out / method
    d.mkdir(parents=True, exist_ok=True)
    p = d / "results.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


@pytest.fixture
def out(tmp_path):
    o = tmp_path / "out"
    write(o, "ewc", make_result())
    write(o, "finetune", make_result(method="finetune", avg_acc=0.5, bwt=None, forgetting=None,
                                     acc_matrix=[[0.9, None], [0.1, 0.9]],
                                     params={"base": 1000, "added_per_task": [], "total": 1000},
                                     artifact_bytes={}, peak_rss_mb=None))
    write(o, "pnn", make_result(method="pnn", avg_acc=0.9, acc_matrix=[[0.9, None], [0.9, 0.9]], bwt=0.0,
                                forgetting=0.0, params={"base": 1000, "added_per_task": [1000, 1200],
                                                        "total": 3200}))
    return o


# ------------------------------------------------------------------ find_results

def test_find_results_all_path_kinds(out):
    assert [r["method"] for r in find_results([str(out)])] == ["ewc", "finetune", "pnn"]
    one = find_results([out / "ewc"])
    assert len(one) == 1 and one[0]["_path"] == str(out / "ewc" / "results.json")
    assert find_results([str(out / "pnn" / "results.json")])[0]["method"] == "pnn"
    # The same file reached twice is loaded once.
    assert len(find_results([out, out / "ewc"])) == 3


def test_find_results_empty_dir(tmp_path):
    with pytest.raises(TaskshareError, match=r"no results.json under .*: run `taskshare run \.\.\. --out .*` first"):
        find_results([str(tmp_path)])
    with pytest.raises(TaskshareError, match="no results.json under"):
        find_results([str(tmp_path / "missing")])


def test_find_results_malformed_json(tmp_path):
    p = write(tmp_path, "bad", "{not json")
    with pytest.raises(TaskshareError, match=rf"{p}: malformed JSON") as e:
        find_results([tmp_path])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["avg_acc", "acc_matrix", "params", "versions"])
def test_find_results_missing_key(tmp_path, key):
    r = make_result()
    del r[key]
    p = write(tmp_path, "ewc", r)
    with pytest.raises(TaskshareError, match=rf"{p}: key '{key}' is missing"):
        find_results([tmp_path])


def test_find_results_bad_values(tmp_path):
    r = make_result()
    del r["params"]["total"]
    write(tmp_path, "a", r)
    with pytest.raises(TaskshareError, match=r"key 'params.total' is missing"):
        find_results([tmp_path])
    write(tmp_path, "a", make_result(acc_matrix=[[90.0, None], [75.0, 87.5]]))
    with pytest.raises(TaskshareError, match=r"key 'acc_matrix' is invalid \(.*not a fraction"):
        find_results([tmp_path])
    write(tmp_path, "a", make_result(tasks=["t0", "t1", "t2"]))
    with pytest.raises(TaskshareError, match=r"'acc_matrix' has 2 rows but 'tasks' names 3"):
        find_results([tmp_path])
    write(tmp_path, "a", [1, 2])
    with pytest.raises(TaskshareError, match="top level is not a JSON object"):
        find_results([tmp_path])


# ------------------------------------------------------------------ table

def test_comparison_table(out):
    table = comparison_table(find_results([out]))
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert "avg acc (%)" in lines[0] and "BWT (pts)" in lines[0] and "peak RSS (MB)" in lines[0]
    assert "params total" in lines[0] and "new params task 1" in lines[0] and "new params/task 2.. (mean)" in lines[0]
    assert "delta_m" not in lines[0] and "FWT" not in lines[0]
    rows = {line.split()[1]: line for line in lines[2:]}
    ewc = rows["ewc"].split()
    # benchmark method seeds acc bwt forget total new-task-1 new-later artifact(2 tokens) time rss
    assert ewc == ["split_mnist", "ewc", "1", "81.25", "-15.00", "15.00", "1,500", "0", "500", "12.3", "KB",
                   "12.3", "512.0"]
    ft = rows["finetune"].split()
    assert ft[3:6] == ["50.00", "-", "-"]
    assert ft[6:] == ["1,000", "-", "-", "-", "12.3", "-"]
    # A zero BWT prints as 0.00 (unsigned), never +0.00 or -0.00.
    assert rows["pnn"].split()[3:9] == ["90.00", "0.00", "0.00", "3,200", "1,000", "1,200"]
    # Sorted by method name within the benchmark (a stable order, not by a noisy metric).
    assert [line.split()[1] for line in lines[2:]] == ["ewc", "finetune", "pnn"]
    # Columns are aligned: every line has the same width for the right-aligned last column.
    assert len({len(line) for line in lines}) == 1


def test_comparison_table_sort_by_benchmark_and_delta_m():
    rs = [make_result(benchmark="b", method="x", avg_acc=0.9),
          make_result(benchmark="a", method="y", avg_acc=0.1, delta_m=-3.25),
          make_result(benchmark="a", method="z", avg_acc=None)]
    lines = comparison_table(rs).splitlines()
    assert [line.split()[:2] for line in lines[2:]] == [["a", "y"], ["a", "z"], ["b", "x"]]
    assert lines[0].rstrip().endswith("delta_m (%)")
    assert lines[2].endswith("-3.25") and lines[3].endswith("-")
    assert lines[3].split()[3] == "-"  # null avg acc


# ------------------------------------------------------------------ plots

def test_plot_results_and_report(out, tmp_path):
    results = find_results([out]) + [make_result(benchmark="perm_mnist", method="ewc", seed=s,
                                                 _path="x") for s in (0, 1)]
    files = plot_results(results, tmp_path / "plots")
    names = sorted(p.name for p in files)
    # One set of five per benchmark; the two perm_mnist seeds of ewc are one method (one heatmap panel).
    assert names == sorted(f"{kind}_{b}.png" for b in ("split_mnist", "perm_mnist") for kind in
                           ("acc_matrix", "task_accuracy", "avg_accuracy", "params", "acc_vs_params"))
    for p in files:
        assert p.read_bytes()[:8] == PNG_SIGNATURE
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names

    # report(): plots go next to the results by default; the table and the file list are returned.
    text = report([str(out)])
    assert "81.25" in text and text.splitlines()[0].startswith("benchmark")
    assert text.splitlines()[-1].startswith(f"wrote 5 plots to {out}: ")
    assert (out / "params_split_mnist.png").read_bytes()[:8] == PNG_SIGNATURE
    assert len(list(out.glob("*.png"))) == 5


def test_report_default_out_dir_for_file(out):
    # Only the table path is exercised here; plotting is covered above.
    f = out / "ewc" / "results.json"
    text = report([str(f)])
    assert (out / "ewc" / "acc_matrix_split_mnist.png").exists()
    assert "wrote 5 plots" in text


# ------------------------------------------------------------------ settings chosen on validation

def test_selection_table_lists_every_candidate_and_marks_the_choice(tmp_path):
    from taskshare.results.table import selection_table
    sel = {"on": "val_avg", "grid": {"lr": ["0.1", "0.01"], "ewc.lambda": ["10"]},
           "chosen": {"lr": "0.01", "ewc.lambda": "10"},
           "scores": [{"setting": {"lr": "0.1", "ewc.lambda": "10"}, "val_avg": None,
                       "error": "non-finite loss (nan) in ewc, task t1, epoch 1: lower the learning rate"},
                      {"setting": {"lr": "0.01", "ewc.lambda": "10"}, "val_avg": 0.8125}]}
    mt = {"on": "val_delta_m", "grid": {"lr": ["0.001"]}, "chosen": {"lr": "0.001"},
          "scores": [{"setting": {"lr": "0.001"}, "val_delta_m": -2.5}]}
    results = [make_result(seed=s, selection=sel) for s in (0, 1)] + [make_result(method="finetune")] \
        + [make_result(benchmark="adult", method="ew", task_metrics={}, selection=mt)]
    lines = selection_table(results).splitlines()
    assert lines[0].startswith("settings chosen on validation")
    assert lines[1].split() == ["benchmark", "method", "setting", "val", "acc", "(%)", "val", "Δm", "(%)"]
    rows = [ln.split() for ln in lines[3:]]
    # one row per candidate (the two seeds share one selection; finetune has none); Δm printed as is, accuracy x100
    assert rows == [["adult", "ew", "lr=0.001", "-2.50", "chosen"],
                    ["split_mnist", "ewc", "lr=0.1", "ewc.lambda=10", "failed:", "non-finite", "loss", "(nan)", "in",
                     "ewc,", "task", "t1,", "epoch", "1"],
                    ["split_mnist", "ewc", "lr=0.01", "ewc.lambda=10", "81.25", "chosen"]]
    assert selection_table([make_result()]) == ""
    # the comparison and test-metric tables name the chosen setting; runs without a grid leave it empty
    table = comparison_table(results).splitlines()
    assert table[0].split()[:5] == ["benchmark", "method", "chosen", "on", "val"]
    assert table[3].split()[:5] == ["split_mnist", "ewc", "lr=0.01", "ewc.lambda=10", "2"]
    assert table[4].split()[:3] == ["split_mnist", "finetune", "1"]
    assert "chosen on val" not in comparison_table([make_result()])
    # `taskshare report` prints it after the comparison table
    write(tmp_path / "grid", "ewc", make_result(selection=sel))
    text = report([str(tmp_path / "grid")])
    assert text.index("settings chosen on validation") > text.index("avg acc (%)")
    assert "81.25" in text.split("settings chosen")[1]


def test_markdown_tables_carry_the_same_cells(out, capsys):
    from taskshare.cli import main
    from taskshare.results.table import render
    results = find_results([out])
    text_rows = [ln.split() for ln in comparison_table(results).splitlines()[2:]]
    md = comparison_table(results, markdown=True).splitlines()
    assert md[0].startswith("| benchmark | method | seeds | avg acc (%) |")
    assert md[1].startswith("| :-- | :-- | --: | --: |")   # text columns left, numbers right
    # the same cells, in the same order, as the aligned text table
    assert [[c.strip() for c in ln.strip("| ").split(" | ")] for ln in md[2:]][0][:4] == text_rows[0][:4]
    assert render(["a", "b"], [["x|y", "1"]], left=1, markdown=True).splitlines()[2] == "| x\\|y | 1 |"
    assert main(["report", "--markdown", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| benchmark |") and "81.25" in printed
