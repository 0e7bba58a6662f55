"""Same seed, same settings => the same bytes: every artifact, checkpoint-free run folder and plot, and
results.json apart from the named timing/memory fields (TIMING_FIELDS), across two separate processes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from taskshare.engine.run import TIMING_FIELDS


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING_FIELDS}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _run(out: Path, argv: list[str]) -> None:
    p = subprocess.run([sys.executable, "-m", "taskshare.cli", "run", *argv, "--quiet", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock" and "tensorboard" not in p.parts}  # event files hold clock times


@pytest.mark.parametrize("argv", [
    ["digits-tiny", "--method", "finetune,ewc,taps,par", "--epochs", "1", "--limit", "60",
     "--set", "par.search_epochs=2"],
    ["synthetic-imbalanced", "--method", "ew,adatask", "--epochs", "1", "--limit", "200"],
], ids=["lifelong", "multi-output"])
def test_two_processes_write_identical_bytes(argv, tmp_path):
    _run(tmp_path / "a", argv)
    _run(tmp_path / "b", argv)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert any(k.endswith(".safetensors") for k in a)
    for name in a:
        if name.endswith("results.json"):
            ra, rb = json.loads(a[name]), json.loads(b[name])
            assert _without_timing(ra) == _without_timing(rb), name
        elif name.endswith("epochs.jsonl"):
            la, lb = ([_without_timing(json.loads(line)) for line in x.splitlines()] for x in (a[name], b[name]))
            assert la == lb and la, name
        else:
            assert a[name] == b[name], f"{name} differs between two runs with the same seed"
