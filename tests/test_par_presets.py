"""PAR's presets and the official training details (issue 14): ``preset=official``, best-validation
checkpoint, early stopping, the few-sample weight-decay rule, BN recalibration, the run-tied search budget."""
from __future__ import annotations

import pytest
import torch

from conftest import gauss_task

from taskshare.config import RunConfig, check_options
from taskshare.errors import ConfigError
from taskshare.methods.par import PAR, Options
from taskshare.methods.par import learner as par_learner
from taskshare.methods.par.config import OFFICIAL
from taskshare.methods.par.search import MIN_AUTO_EPOCHS, search_budget
from taskshare.methods.par.selection import few_shot_weight_decay

SHAPE = (1, 8, 8)
TINY = dict(extractor="raw", channels=4, cells=2, steps=2, search_epochs=0)
CFG = RunConfig(epochs=4, batch_size=32, lr=0.05, weight_decay=0.01, checkpoint_minutes=1e9)
A = gauss_task("a", 1, 10)


def make(**options) -> PAR:
    return PAR(CFG, Options(**{**TINY, **options}), SHAPE)


def clone_state(par: PAR, e: int = 0) -> dict:
    s = par.experts[e].tt.state()
    return {"shared": {k: v.clone() for k, v in s["shared"].items()},
            "tasks": {t: {k: v.clone() for k, v in ts.items()} for t, ts in s["tasks"].items()}}


def equal_state(a: dict, b: dict) -> bool:
    return (all(torch.equal(v, b["shared"][k]) for k, v in a["shared"].items())
            and all(torch.equal(v, b["tasks"][t][k]) for t, ts in a["tasks"].items() for k, v in ts.items()))


def scripted(monkeypatch, accs: list[float]) -> list[int]:
    """Validation accuracies by epoch, injected; returns the list of calls made."""
    calls: list[int] = []

    def fake(predict, dataset, task, batch_size, device):
        calls.append(len(calls))
        return accs[len(calls) - 1]
    monkeypatch.setattr(par_learner, "val_accuracy", fake)
    return calls


def run_epochs(par: PAR, task, epochs: int, snapshots: list | None = None) -> None:
    gen = torch.Generator().manual_seed(0)
    for e in range(epochs):
        par.begin_epoch(e)
        for x, y in task.train.batches(32, shuffle=True, generator=gen):
            par.observe(x, y)
        par.end_epoch(e)
        if snapshots is not None:
            snapshots.append(clone_state(par))


def test_preset_official_sets_every_listed_value_and_explicit_options_win():
    official = Options(preset="official")
    for name, value in OFFICIAL.items():
        assert getattr(official, name) == value, name
    assert {"few_shot_max", "zero_is_unrelated", "bn", "channels", "search_epochs", "best_val",
            "early_stop_patience", "few_shot_wd_max"} <= set(OFFICIAL)
    assert (official.few_shot_max, official.zero_is_unrelated, official.bn, official.channels) == (25, True, "shared", 64)
    assert (official.search_epochs, official.best_val, official.early_stop_patience) == (100, True, 20)
    assert (official.few_shot_wd_max, official.few_shot_wd_factor) == (25, 10.0)
    paper = Options()
    assert paper.preset == "paper" and all(getattr(paper, k) != v for k, v in OFFICIAL.items())
    assert Options(preset="paper") == paper
    # explicit options override the preset, also through the runner's option check (strings from --set)
    mixed = check_options(Options, {"preset": "official", "channels": "16", "bn": "frozen"}, "par")
    assert (mixed.channels, mixed.bn, mixed.best_val, mixed.few_shot_max) == (16, "frozen", True, 25)
    assert mixed.explicit == {"preset", "channels", "bn"}
    with pytest.raises(ConfigError, match="preset must be one of paper, official"):
        check_options(Options, {"preset": "nope"}, "par")
    with pytest.raises(ConfigError, match="search_epochs"):
        check_options(Options, {"search_epochs": "-2"}, "par")


def test_best_val_restores_the_best_epochs_weights(monkeypatch):
    calls = scripted(monkeypatch, [0.5, 0.9, 0.3, 0.6])  # epoch 1 is the best; later epochs are worse
    par = make(best_val=True, bn_recalibrate=False)
    par.begin_task(A, 0)
    snaps: list[dict] = []
    run_epochs(par, A, 4, snaps)
    assert len(calls) == 4 and not equal_state(snaps[1], snaps[3])
    par.end_task(A)
    assert equal_state(snaps[1], clone_state(par))
    d = par.decisions[0]
    assert (d["best_val_epoch"], d["best_val_acc"], d["stopped_epoch"]) == (1, 0.9, None)


def test_best_val_never_better_than_zero_restores_the_initial_state(monkeypatch):
    scripted(monkeypatch, [0.0, 0.0])  # the official best_acc starts at 0 with the model before training
    par = make(best_val=True, bn_recalibrate=False)
    par.begin_task(A, 0)
    before = clone_state(par)
    run_epochs(par, A, 2)
    par.end_task(A)
    assert equal_state(before, clone_state(par)) and par.decisions[0]["best_val_epoch"] == -1


def test_without_best_val_the_last_epoch_stays(monkeypatch):
    calls = scripted(monkeypatch, [0.9, 0.1])
    par = make(bn_recalibrate=False)
    par.begin_task(A, 0)
    snaps: list[dict] = []
    run_epochs(par, A, 2, snaps)
    par.end_task(A)
    assert calls == [] and equal_state(snaps[1], clone_state(par)) and "best_val_epoch" not in par.decisions[0]


def test_early_stopping_stops_after_patience_epochs_without_gain(monkeypatch):
    calls = scripted(monkeypatch, [0.5, 0.4, 0.5, 0.9, 0.9])  # no strict gain in epochs 1, 2: stop after 2
    par = make(early_stop_patience=2, bn_recalibrate=False)
    par.begin_task(A, 0)
    snaps: list[dict] = []
    run_epochs(par, A, 5, snaps)
    assert len(calls) == 3                              # not evaluated once stopped
    assert equal_state(snaps[2], snaps[4])              # the remaining epochs change nothing
    assert float(par.observe(*next(iter(A.train.batches(32))))) == 0.0
    par.end_task(A)
    d = par.decisions[0]
    assert (d["stopped_epoch"], d["best_val_epoch"]) == (2, 0)
    assert equal_state(snaps[2], clone_state(par))      # early stopping alone keeps the last state


def test_early_stopping_is_for_new_experts_only(monkeypatch):
    scripted(monkeypatch, [0.5, 0.4, 0.4, 0.4] * 4)
    par = make(early_stop_patience=1, bn_recalibrate=False, reuse_threshold=0.75)
    par.begin_task(A, 0)
    run_epochs(par, A, 2)
    par.end_task(A)
    again = gauss_task("a-again", 1, 12)
    par.begin_task(again, 1)
    assert par.decision("a-again")["reuse"] == "transfer"
    snaps: list[dict] = []
    run_epochs(par, again, 3, snaps)
    par.end_task(again)
    assert par.decisions[0]["stopped_epoch"] == 1
    assert par.decisions[1]["stopped_epoch"] is None and not equal_state(snaps[1], snaps[2])


@pytest.mark.parametrize("n, factor", [(25, 10), (26, 1)])
def test_few_sample_weight_decay_at_the_threshold(n, factor):
    par = make(few_shot_wd_max=25)
    task = gauss_task(f"n{n}", 1, 10, n=n)
    par.begin_task(task, 0)
    assert all(g["weight_decay"] == pytest.approx(0.01 * factor) for g in par.optimizer.param_groups)
    plain = make()
    plain.begin_task(task, 0)
    assert all(g["weight_decay"] == 0.01 for g in plain.optimizer.param_groups)
    # the official reuse() passes no few-data flag: head-only reuse keeps the run's weight decay
    assert few_shot_weight_decay(0.01, 10, "head", 25, 10.0) == 0.01
    assert few_shot_weight_decay(0.01, 10, "transfer", 25, 10.0) == pytest.approx(0.1)


def test_bn_recalibration_sets_exact_training_statistics():
    par = make(bn_recalibrate=True)
    par.begin_task(A, 0)
    run_epochs(par, A, 1)
    par.end_task(A)
    net = par.experts[0].net
    stem_conv, stem_bn = net.stem[0], net.stem[1]
    x, _ = A.train.to_tensors()
    with torch.no_grad():  # the equal-weight average of the statistics of the run's training batches
        hs = [stem_conv(x[i:i + CFG.batch_size]) for i in range(0, len(x), CFG.batch_size)]
    assert len(hs) == 4 and len(hs[-1]) < CFG.batch_size
    assert torch.allclose(stem_bn.running_mean, torch.stack([h.mean((0, 2, 3)) for h in hs]).mean(0), atol=1e-5)
    assert torch.allclose(stem_bn.running_var, torch.stack([h.var((0, 2, 3)) for h in hs]).mean(0),
                          rtol=1e-4, atol=1e-6)


def test_search_budget_is_tied_to_the_run():
    assert search_budget(-1, 0, 1, 2000) == (MIN_AUTO_EPOCHS, 200)     # 1 epoch: 10 samples on 200 images
    assert search_budget(-1, 0, 20, 2000) == (20, 0)                    # >= 10 epochs: one per epoch, all data
    assert search_budget(-1, 0, 1, 100) == (MIN_AUTO_EPOCHS, 0)         # small tasks: all the data
    assert search_budget(-1, 150, 1, 2000) == (MIN_AUTO_EPOCHS, 150)    # an explicit limit caps further
    assert search_budget(7, 300, 1, 2000) == (7, 300)                   # explicit search_epochs: as given
    par = PAR(RunConfig(epochs=1, batch_size=32, lr=0.05), Options(extractor="raw", channels=4, cells=2, steps=2),
              SHAPE)
    par.begin_task(gauss_task("big", 1, 10, n=400), 0)
    d = par.decisions[0]
    assert (d["search_epochs"], d["search_n"], len(d["search_acc"])) == (MIN_AUTO_EPOCHS, 128, 10)
