"""PAR on any x86-64 CPU and thread count: no channels_last (a oneDNN crash on AVX2 with one thread, see
docs/known-issues.md), and a search that survives oneDNN capped at AVX2 with one thread."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from taskshare.methods.par.expert import Genotype, build_expert
from taskshare.methods.par.search import SuperNet, search

SEARCH = """
import torch
torch.set_num_threads(1)
from taskshare.methods.par.search import search
g = torch.Generator().manual_seed(0)
y = torch.arange(40) % 2
x = torch.randn(40, 1, 6, 6, generator=g) + y.view(-1, 1, 1, 1).float()
for seed in range(3):
    search(x, y, 2, epochs=3, seed=seed, channels=4, n_cells=2, steps=2, batch_size=10, lr=0.05)
print("ok")
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN ISA caps are x86-64 only")
def test_search_survives_avx2_with_one_thread():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", SEARCH], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


def _not_channels_last(t: torch.Tensor) -> bool:
    """False for a 4-d tensor laid out channels_last (and not also plainly contiguous, as 1x1 maps are)."""
    return t.dim() != 4 or t.is_contiguous() or not t.is_contiguous(memory_format=torch.channels_last)


def test_search_and_experts_keep_the_default_memory_format():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(20) % 2
    x = torch.randn(20, 1, 6, 6, generator=g)
    seen = []
    original = torch.nn.Conv2d._conv_forward

    def spy(self, inp, weight, bias):
        seen.append(_not_channels_last(inp) and _not_channels_last(weight))
        return original(self, inp, weight, bias)

    torch.nn.Conv2d._conv_forward = spy
    try:
        search(x, y, 2, epochs=1, seed=0, channels=4, n_cells=2, steps=2, batch_size=10)
    finally:
        torch.nn.Conv2d._conv_forward = original
    assert seen and all(seen)
    net = SuperNet(1, 4, 2, 2, 2)
    expert = build_expert(Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1)) * 2,
                                   reduce=(("max_pool_3x3", 0), ("dil_conv_3x3", 1)) * 2), 1, 4, 2, 1, 0)
    for module in (net, expert):
        assert all(_not_channels_last(p) for p in module.parameters())


def test_ctrl_c_during_the_search_stops_it(monkeypatch):
    """A KeyboardInterrupt inside the search (Ctrl-C) leaves PAR's begin_task at once: nothing swallows it."""
    import importlib

    from conftest import gauss_task
    from taskshare.config import RunConfig
    from taskshare.methods.par import PAR

    search_module = importlib.import_module("taskshare.methods.par.search")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = search_module._epoch
    monkeypatch.setattr(search_module, "_epoch", interrupted)
    cfg = RunConfig(epochs=1, batch_size=16, lr=0.05, checkpoint_minutes=1e9)
    par = PAR(cfg, PAR.Options(extractor="raw", channels=4, cells=2, steps=2, search_epochs=5), (1, 8, 8))
    task = gauss_task("a", 0, 1)
    with pytest.raises(KeyboardInterrupt):
        par.begin_task(task, 0)
    assert len(calls) == 2 and par.decisions == [] and par.experts == []
    monkeypatch.undo()  # a retry after the interrupt starts clean (no relatedness to its own stale prototypes)
    par.begin_task(task, 0)
    assert par.decisions[0]["relatedness"] == {} and len(par.decisions[0]["search_acc"]) == 5


def test_search_shows_progress_unless_quiet(capsys):
    from taskshare import progress

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 6, 6, generator=g), torch.arange(20) % 2
    progress.set_quiet(False)
    try:
        search(x, y, 2, epochs=2, seed=0, channels=4, n_cells=2, steps=2, batch_size=10, desc="PAR search, task t")
    finally:
        progress.set_quiet(True)
    err = capsys.readouterr().err
    assert "PAR search, task t" in err and "held-out acc" in err
    search(x, y, 2, epochs=2, seed=0, channels=4, n_cells=2, steps=2, batch_size=10)
    assert capsys.readouterr().err == ""
