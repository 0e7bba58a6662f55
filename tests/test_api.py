"""The PEFT-style surface (taskshare.wrap / TaskModel / taskshare.load) and the CLI's multi-seed runs, config.yaml
reruns and option listing."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import taskshare
from taskshare.cli import main
from taskshare.errors import ArtifactError, ConfigError, TaskshareError
from taskshare.models import TaskNet, build_backbone

ROOT = Path(__file__).parents[1]
METHODS = ("patches", "taps", "head")


def _net():
    backbone = build_backbone("cnn", (3, 16, 16), seed=3)
    torch.manual_seed(4)   # TaskNet's placeholder head draws from the global generator
    return TaskNet(backbone)


def _trained(method: str):
    torch.manual_seed(0)
    tm = taskshare.wrap(_net(), method=method, lambda_=0.5)
    tm.add_task("a", 3)
    tm.add_task("b", class_names=["x", "y", "z", "w", "v"])
    x = torch.rand(12, 3, 16, 16)
    for task, k in (("a", 3), ("b", 5)):
        tm.set_task(task)
        tm.train()
        opt = torch.optim.SGD(tm.trainable_parameters(), lr=0.1)
        for _ in range(2):
            loss = F.cross_entropy(tm(x), torch.randint(0, k, (12,))) + tm.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return tm.eval(), x


@pytest.mark.parametrize("method", METHODS)
def test_disabled_is_the_base_model_and_other_tasks_are_untouched(method):
    x = torch.rand(6, 3, 16, 16)
    base = _net().eval()
    with torch.no_grad():
        expected = base(x)
    tm = taskshare.wrap(_net(), method=method)
    tm.add_task("a", 3)
    tm.eval()
    with torch.no_grad():
        before_a = tm(x, task="a")
    tm.add_task("b", 4)
    with tm.using("b"):
        tm.train()
        opt = torch.optim.SGD(tm.trainable_parameters(), lr=0.5)
        F.cross_entropy(tm(x), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
        opt.step()
    tm.eval().set_task(None)
    with pytest.raises(TaskshareError, match="no task is active"):
        tm(x)
    with torch.no_grad(), tm.disabled():
        assert torch.equal(tm(x), expected)                    # disabled = the base model, bit for bit
    with torch.no_grad():
        assert torch.equal(tm(x, task="a"), before_a)          # training b left a unchanged
        assert not torch.equal(tm(x, task="b")[:, :3], before_a)


@pytest.mark.parametrize("method", METHODS)
def test_mixed_batch_merged_export_and_save_load_round_trip(method, tmp_path):
    tm, x = _trained(method)
    names = ["a", "b", "b", "a", "a", "b", "a", "b", "b", "a", "a", "b"]
    with torch.no_grad():
        mixed = tm(x, task=names)
        sep = {t: tm(x, task=t) for t in ("a", "b")}
        for i, n in enumerate(names):
            k = sep[n].shape[1]
            assert torch.allclose(mixed[i, :k], sep[n][i], atol=1e-6)
            assert torch.isinf(mixed[i, k:]).all()
        for t in ("a", "b"):
            assert (tm.merged(t)(x) - sep[t]).abs().max() <= 1e-6
    tm.save(tmp_path / "f")
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["schema"] == "taskshare-model/1" and manifest["method"] == method
    assert manifest["tasks"]["b"]["num_classes"] == 5 and manifest["tasks"]["b"]["class_names"] == list("xyzwv")
    assert manifest["tasks"]["a"]["parameters"] == tm.num_parameters("a") > 0
    assert manifest["base"]["builder"]["name"] == "tasknet"
    back = taskshare.load(tmp_path / "f").eval()
    with torch.no_grad():
        assert torch.equal(back(x, task=names), mixed)
    assert back.class_names["b"] == list("xyzwv")


def test_penalty_is_the_taps_sparsity_term_and_zero_elsewhere():
    tm, _ = _trained("taps")
    p = tm.penalty("a")
    assert p.requires_grad and p.item() > 0
    p.backward()
    scores = [t for n, t in tm.tt.tensors("a").items() if n.endswith(".score")]
    assert scores and all(s.grad is not None for s in scores)
    assert taskshare.wrap(_net(), method="patches").penalty().item() == 0.0


def test_load_refuses_what_does_not_match(tmp_path):
    tm, x = _trained("patches")
    folder = tmp_path / "f"
    tm.save(folder)
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        taskshare.load(tmp_path)
    with pytest.raises(ArtifactError, match="is not a folder"):
        taskshare.load(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match=r"saved on a TaskNet, not a Linear"):
        taskshare.load(folder, model=torch.nn.Linear(2, 2))
    other = _net()
    with torch.no_grad():
        other.backbone.fc[0].weight.add_(1)
    with pytest.raises(ArtifactError, match="base network differs"):
        taskshare.load(folder, model=other)
    data = bytearray((folder / "tasks" / "a.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (folder / "tasks" / "a.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        taskshare.load(folder)
    assert taskshare.load(folder, tasks=["b"]).tasks == ["b"]
    m = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**m, "schema": "taskshare-model/0"}))
    with pytest.raises(ArtifactError, match="schema 'taskshare-model/0'"):
        taskshare.load(folder)


def test_your_own_model_needs_to_be_passed_back_and_bad_calls_say_what_to_do(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.body, self.head = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)), \
                torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.body(x))

    tm = taskshare.wrap(Net(), method="patches", input_shape=(4,))
    tm.add_task("t", 3)
    tm.save(tmp_path / "f")
    with pytest.raises(ArtifactError, match="your own Net model: rebuild it and pass it"):
        taskshare.load(tmp_path / "f")
    back = taskshare.load(tmp_path / "f", model=Net()).eval()
    x = torch.rand(5, 4)
    with torch.no_grad():
        assert torch.equal(back(x), tm.eval()(x))
    with pytest.raises(TaskshareError, match=r"inputs of shape \(3,\) given, this model takes \(4,\)"):
        tm(torch.rand(5, 3))
    with pytest.raises(TaskshareError, match="unknown task 'nope'"):
        tm(x, task=["t", "nope", "t", "t", "t"])
    with pytest.raises(TaskshareError, match="one task name per sample: 5 samples, 2 names"):
        tm(x, task=["t", "t"])
    with pytest.raises(ConfigError, match="unknown method 'lora' for wrap: choose one of patches, taps, head"):
        taskshare.wrap(Net(), method="lora")
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        tm.add_task("u", 0)


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_quickstart_loads_in_a_fresh_process_bit_identically(tmp_path):
    """docs/quickstart.md: train + save in one process, load + mixed-batch predict in another."""
    from taskshare.errors import DataError
    from taskshare.models.weights import mobilenet_v2_imagenet
    try:
        mobilenet_v2_imagenet()
    except DataError:
        pytest.skip("the MobileNetV2 weight package is not installed (make setup)")
    first, second = _blocks(ROOT / "docs" / "quickstart.md")
    assert len(first.splitlines()) + len(second.splitlines()) < 30
    for code in (first, second):
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "my-tasks" / "manifest.json").exists()
    assert not (tmp_path / "my-tasks" / "base.safetensors").exists()   # the base comes from the package


def test_multi_seed_summary_and_config_yaml_rerun(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["run", "digits-tiny", "-m", "finetune", "--epochs", "1", "--limit", "40", "--quiet"]
    assert main([*args, "--seed", "0,1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"finetune\s+2\s+\d+\.\d\d ± \d+\.\d\d", table)
    accs = [json.loads((out / f"seed-{s}" / "finetune" / "results.json").read_text())["avg_acc"] for s in (0, 1)]
    group = json.loads((out / "summary.json").read_text())["groups"][0]
    assert group["seeds"] == [0, 1] and group["avg_acc"]["n"] == 2
    assert group["avg_acc"]["mean"] == pytest.approx(sum(accs) / 2)
    assert group["avg_acc"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert main(["run", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    for s in (0, 1):
        a, b = (json.loads((d / f"seed-{s}" / "finetune" / "results.json").read_text())["acc_matrix"]
                for d in (out, tmp_path / "again"))
        assert a == b
    log = [json.loads(line) for line in (out / "seed-1" / "finetune" / "epochs.jsonl").read_text().splitlines()]
    assert [(r["task"], r["epoch"]) for r in log] == [(f"digits-{2 * i}-{2 * i + 1}", 1) for i in range(5)]
    assert all(r["train_loss"] > 0 for r in log)
    text = (out / "config.yaml").read_text()
    assert "lr: 0.01" in text and "n_tasks: 5" in text and "limit: 40" in text
    (tmp_path / "c.yaml").write_text("seed: 3\nepochs: 1\nlimit: 30\n")   # a hand-written config's seed counts
    assert main(["run", "digits-tiny", "-m", "finetune", "--config", str(tmp_path / "c.yaml"), "--quiet",
                 "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "finetune" / "results.json").read_text())["seed"] == 3
    assert main(["run", "digits-tiny", "--seed", "0,x", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "--seed '0,x': give a seed" in capsys.readouterr().err


def test_list_options_prints_defaults_types_and_meanings(capsys):
    assert main(["list", "--options", "ewc"]) == 0
    text = capsys.readouterr().out
    assert "ewc: a lifelong (task streams) method" in text
    assert re.search(r"lambda\s+float\s+default 1000.0\s+\S", text)
    assert main(["list", "--options", "adatask"]) == 0
    assert re.search(r"variant\s+str\s+default 'adam'\s+the AdaTask optimizer", capsys.readouterr().out)
    assert main(["list", "--options", "nope"]) == 2


def test_grid_chooses_each_methods_setting_on_validation_and_records_it(tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["run", "digits-tiny", "-m", "finetune,ewc", "--epochs", "1", "--limit", "40", "--quiet",
            "--set", "benchmark.n_tasks=2", "--grid", "lr=0.1,0.001", "--grid", "ewc.lambda=1,100"]
    assert main([*argv, "--out", str(out)]) == 0
    ewc = json.loads((out / "ewc" / "results.json").read_text())
    sel = ewc["selection"]
    assert sel["grid"] == {"lr": ["0.1", "0.001"], "ewc.lambda": ["1", "100"]} and len(sel["scores"]) == 4
    best = max(sel["scores"], key=lambda s: s["val_avg"])
    assert sel["chosen"] == best["setting"] and ewc["val_avg"] == best["val_avg"]   # chosen on validation
    assert ewc["config"]["lr"] == float(sel["chosen"]["lr"])
    assert ewc["config"]["methods"]["ewc"]["lambda"] == float(sel["chosen"]["ewc.lambda"])
    fin = json.loads((out / "finetune" / "results.json").read_text())["selection"]
    assert fin["grid"] == {"lr": ["0.1", "0.001"]} and len(fin["scores"]) == 2   # ewc.lambda is not its key
    assert main(["run", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    again = json.loads((tmp_path / "again" / "ewc" / "results.json").read_text())
    assert again["selection"]["chosen"] == sel["chosen"] and again["acc_matrix"] == ewc["acc_matrix"]
    assert main([*argv[:-2], "--grid", "lr", "--out", str(tmp_path / "bad")]) == 2
    assert "--grid 'lr': give KEY=V1,V2" in capsys.readouterr().err


def test_a_diverging_grid_setting_loses_instead_of_stopping_the_grid(tmp_path):
    from taskshare.engine.grid import select_on_validation
    from taskshare.errors import TrainingError

    def run(method, setting, seed, where):   # lr=1 diverges; otherwise val_avg = 1 - lr, written like a run
        if setting["lr"] == "1":
            raise TrainingError("non-finite loss (nan) in m: lower the learning rate")
        d = where / method
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"val_avg": 1 - float(setting["lr"]), "seed": seed}))
        return json.loads((d / "results.json").read_text())

    res = select_on_validation(run, ["m"], {"lr": ["1", "0.5", "0.1"]}, [0, 1], tmp_path, lambda s: tmp_path / f"s{s}")
    sel = res[0]["selection"]
    assert [e["val_avg"] for e in sel["scores"]] == [None, 0.5, 0.9] and "non-finite" in sel["scores"][0]["error"]
    assert sel["chosen"] == {"lr": "0.1"} and [r["seed"] for r in res] == [0, 1]
    assert json.loads((tmp_path / "s1" / "m" / "results.json").read_text())["selection"] == sel


@pytest.mark.parametrize("method", ["patches", "taps"])
def test_wrap_a_hugging_face_transformer(method, tmp_path):
    """MiniLM (transformers): patches = LayerNorm scale/bias + head; TAPS gates every Linear."""
    from taskshare.errors import DataError
    try:
        backbone = build_backbone("minilm", (2, 16), seed=0)
        from taskshare.models.minilm import tokenize
        x = tokenize(["a good film", "dull and long", "the dress fits", "great value"], max_length=16)
    except DataError:
        pytest.skip("the MiniLM package is not installed (make setup)")
    tm = taskshare.wrap(TaskNet(backbone), method=method, input_shape=(2, 16))
    tm.add_task("pos", 2)
    tm.add_task("topic", 3)
    tm.train().set_task("pos")
    opt = torch.optim.SGD(tm.trainable_parameters(), lr=0.01)
    (F.cross_entropy(tm(x), torch.tensor([1, 0, 1, 1])) + tm.penalty()).backward()
    opt.step()
    if method == "patches":
        assert all(n.endswith(("LayerNorm.weight", "LayerNorm.bias")) or n.startswith("head.") for n in tm.tt.slots)
    names = ["pos", "topic", "pos", "topic"]
    with torch.no_grad():
        out = tm.eval()(x, task=names)
    tm.save(tmp_path / "f")
    with torch.no_grad():
        assert torch.equal(taskshare.load(tmp_path / "f").eval()(x, task=names), out)


def test_multi_output_grid_shares_one_stl_reference_and_chooses_on_validation_delta_m(tmp_path):
    out = tmp_path / "m"
    assert main(["run", "synthetic-imbalanced", "-m", "ew,adatask", "--epochs", "1", "--limit", "200", "--quiet",
                 "--set", "optimizer=adam", "--grid", "lr=0.01,0.001", "--out", str(out)]) == 0
    stl = json.loads((out / "stl" / "results.json").read_text())
    assert stl["config"]["lr"] == 0.01                       # the run's own settings, trained once
    for method in ("ew", "adatask"):
        res = json.loads((out / method / "results.json").read_text())
        sel = res["selection"]
        assert sel["on"].startswith("val_delta_m") and len(sel["scores"]) == 2
        best = max(sel["scores"], key=lambda s: s["val_delta_m"])
        assert sel["chosen"] == best["setting"] and res["val_delta_m"] == pytest.approx(best["val_delta_m"])
        assert res["stl_baseline"]["task_metrics"] == stl["task_metrics"]   # every setting against the same STL
    assert not (out / "grid" / "stl").exists()
