"""Baselines on PAR's own expert architecture (``model=par-cell``): the same cell network PAR allocates."""
from __future__ import annotations

import torch

from taskshare.config import RunConfig
from taskshare.data import build_benchmark
from taskshare.engine.lifelong import run_method
from taskshare.models import build_backbone
from taskshare.models.cells import BASELINE_GENOTYPE, CellBackbone, build_expert


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_par_cell_is_a_par_expert_without_its_head():
    bb = build_backbone("par-cell", (1, 8, 8), seed=3)
    assert isinstance(bb, CellBackbone) and bb.out_dim == 64
    expert = build_expert(BASELINE_GENOTYPE, 1, 16, 4, 3, seed=3)
    assert _params(bb) == _params(expert) - _params(expert.head)
    x = torch.rand(2, 1, 8, 8)
    bb.eval(), expert.eval()
    with torch.no_grad():
        assert torch.equal(bb(x), expert.features(x))   # same weights from the same seed: same features


def test_expert_per_task_on_par_cell_adds_one_cell_expert_per_task(tmp_path):
    stream = build_benchmark("digits-tiny", seed=0, options={"n_tasks": 2})
    cfg = RunConfig(epochs=1, limit=40, model="par-cell")
    res = run_method(stream, "expert-per-task", cfg, tmp_path, benchmark="digits-tiny", quiet=True)
    per_task = _params(build_backbone("par-cell", (1, 8, 8), seed=0)) + 64 * 5 + 5
    assert res["params"]["added_per_task"] == [per_task, per_task]
