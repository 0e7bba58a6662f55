"""Transfer set-up (issue 14): a hash-checked checkpoint is read once per process and every caller gets its
own tensors; a --limit below the batch size is named in one line."""
from __future__ import annotations

import os

import torch

from taskshare import progress
from taskshare.engine.lifelong import run_method
from taskshare.models import weights as W


def test_hash_checked_checkpoint_is_read_once_and_never_aliased(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.arange(4.0)}, path)
    sha = W.sha256_of(path)
    reads = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(1) or load(*a, **k))
    first = W.load_checkpoint(path, sha)
    first["a"].zero_()  # a model loading it may change its copy in place
    second = W.load_checkpoint(path, sha)
    assert len(reads) == 1 and torch.equal(second["a"], torch.arange(4.0))
    torch.save({"a": torch.ones(5)}, path)  # another file (size, mtime): hashed and read again
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert torch.equal(W.load_checkpoint(path, W.sha256_of(path))["a"], torch.ones(5))
    assert len(reads) == 2
    W.load_checkpoint(path)  # without a hash: read every time
    assert len(reads) == 3


def test_limit_below_batch_size_warns_in_one_line(stream, cfg, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "_QUIET", False)
    cfg.epochs, cfg.limit, cfg.batch_size = 1, 8, 16
    run_method(stream, "finetune", cfg, tmp_path, quiet=False)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert lines == ["[finetune] warning: --limit 8 is below the batch size 16: one optimizer step per task and "
                     "epoch"]
    cfg.limit = 16
    run_method(stream, "finetune", cfg, tmp_path / "b", quiet=False)
    assert "warning" not in capsys.readouterr().err
