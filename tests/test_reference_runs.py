"""The reference runs (tests/reference_runs.py) give the stored numbers: a refactoring changes none of them.

On the platform that recorded them (torch version, CPU capability, thread count, CPU vendor) every artifact's
tensors must be bit-identical; elsewhere kernels sum in another order, so tensors are compared through their
sums (relative 1e-3) and accuracies may move by at most one test sample's worth. The vendor is part of the
platform: on an AMD CPU with the same AVX512 capability as the Intel one that recorded them, every run's bits
differ.
"""
from __future__ import annotations

import json
import math

import pytest

import reference_runs as ref

STORED = json.loads(ref.STORE.read_text()) if ref.STORE.exists() else {"platform": "", "runs": {}}


def test_every_run_is_stored():
    assert sorted(STORED["runs"]) == sorted(ref.all_runs()), "rerun: python tests/reference_runs.py --write"


def _close(a, b, tol) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


@pytest.mark.parametrize("name", ref.all_runs())
def test_reference_run_is_unchanged(name):
    if name not in STORED["runs"]:
        pytest.fail(f"{name} is not stored: python tests/reference_runs.py --write")
    want, got = STORED["runs"][name], ref.run(name)
    assert sorted(got["artifacts"]) == sorted(want["artifacts"])
    if ref.platform_key() == STORED["platform"]:
        assert got == want, f"{name}: numbers changed (compare with tests/data/reference_runs.json)"
        return
    metrics = "acc_matrix" if "acc_matrix" in want else "task_metrics"
    assert _close(got[metrics], want[metrics], 0.02), f"{name}: {metrics} moved beyond kernel noise"
    for file, entry in want["artifacts"].items():
        assert _close(got["artifacts"][file]["sums"], entry["sums"], 1e-3), f"{name}: {file} tensors moved"
