"""Config validation and the command line: bad input is a one-line error and exit status 2."""
from __future__ import annotations

import json

import pytest

from taskshare.cli import main
from taskshare.config import build_config, load_file, parse_set
from taskshare.errors import ConfigError
from taskshare.methods import method_options


def cfg_from(raw):
    return build_config(raw, method_options())


def test_set_values_are_typed_and_sections_validated():
    cfg = cfg_from(parse_set(["epochs=3", "lr=1e-3", "limit=null", "ewc.lambda=50", "benchmark.n_tasks=2"]))
    assert cfg.epochs == 3 and cfg.lr == 0.001 and cfg.limit is None
    assert cfg.methods["ewc"] == {"lambda": 50.0} and cfg.benchmark == {"n_tasks": "2"}  # typed (benchmark: at build)


@pytest.mark.parametrize("items, message", [
    (["epoch=3"], "unknown config key 'epoch': valid keys are epochs, batch_size"),
    (["epochs=three"], r"epochs='three' is not a valid int"),
    (["epochs=0"], "epochs must be between 1 and"),
    (["optimizer=rmsprop"], "optimizer='rmsprop' is not valid: choose one of sgd, adam"),
    (["ewc.lamda=3"], "unknown option ewc.lamda: valid options are ewc.lambda, ewc.fisher_samples"),
    (["ewc.fisher=exact"], "ewc: fisher='exact': choose empirical or true"),
    (["lwf.alpha=x"], r"lwf.alpha='x' is not a valid float"),
    (["epochs"], "expected key=value"),
])
def test_bad_settings_name_the_problem(items, message):
    with pytest.raises(ConfigError, match=message):
        cfg_from(parse_set(items))


def test_config_files_yaml_and_toml(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 4\newc:\n  lambda: 10\n")
    (tmp_path / "b.toml").write_text("epochs = 5\n[lwf]\nalpha = 0.5\n")
    assert cfg_from(load_file(tmp_path / "a.yaml")).epochs == 4
    assert cfg_from(load_file(tmp_path / "b.toml")).methods["lwf"] == {"alpha": 0.5}
    (tmp_path / "c.yaml").write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_file(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("argv, message", [
    (["run", "no-such-bench", "--method", "finetune"], "unknown benchmark 'no-such-bench'"),
    (["run", "digits-tiny", "--method", "magic"], "unknown method 'magic'"),
    (["run", "digits-tiny", "--method", "ewc", "--set", "ewc.lambda=-1"], "lambda must be >= 0"),
    (["report", "/nonexistent/dir"], "no results.json under"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_run_list_and_report(tmp_path, capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "split-mnist" in listing and "expert-per-task" in listing
    assert [line for line in listing.splitlines() if not line.startswith(" ")] == [
        "benchmarks:", "methods (--method):", "multi-task benchmarks (one input, several outputs):",
        "multi-task methods (--method, with a multi-task benchmark):"]
    assert "  adatask " in listing and "  synthetic-imbalanced " in listing
    out = tmp_path / "out"
    code = main(["run", "digits-tiny", "--method", "finetune,expert-per-task", "--epochs", "1", "--limit", "50",
                 "--quiet", "--out", str(out), "--set", "benchmark.n_tasks=2"])
    assert code == 0
    table = capsys.readouterr().out
    assert "finetune" in table and "expert-per-task" in table and "wrote" in table
    res = json.loads((out / "finetune" / "results.json").read_text())
    assert res["benchmark"] == "digits-tiny" and len(res["tasks"]) == 2 and res["config"]["limit"] == 50
    assert sorted(p.name for p in out.glob("*.png"))[:1] == ["acc_matrix_digits-tiny.png"]
    assert main(["report", str(out)]) == 0
    assert "avg acc" in capsys.readouterr().out
