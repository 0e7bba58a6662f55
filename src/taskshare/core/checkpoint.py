"""Checkpoints checked field by field before anything is restored.

A checkpoint is a nested state written by `serialize.save_state`. Before a run resumes from one, every
field it relies on is checked (present, of the right type, in range, made with the same settings), and
restoring the learner's tensors turns a mismatch into one line too. So `--resume` with an edited, truncated
or foreign checkpoint stops with a one-line error and changes nothing.

- `check_lifelong(ckpt, path, identity, n_tasks, epochs, offline)`: the lifelong runner's checkpoint
  (identity, learner, rows, task, epoch, elapsed, rng).
- `check_multi_output(ckpt, path, identity, epochs)`: the multi-output runner's (identity, epoch, model,
  stepper, best, history, elapsed, rng, au).
- `restoring(path)`: a context in which a state_dict that does not fit is a one-line ArtifactError.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from taskshare.errors import ArtifactError, ConfigError


def _invalid(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"checkpoint {path} is invalid: {what}; delete it or run without --resume to start over")


def _int_in(ckpt: dict, key: str, lo: int, hi: int, path: Path) -> int:
    v = ckpt[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _invalid(path, f"{key}={v!r} is not an integer in {lo}..{hi}")
    return v


def _common(ckpt: Any, path: Path, identity: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(ckpt, dict):
        raise _invalid(path, "it is not a mapping of fields")
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise _invalid(path, f"field {missing[0]!r} is missing")
    if ckpt["identity"] != identity:
        raise ConfigError(f"checkpoint {path} was made with other settings: resume with the same "
                          "benchmark, method and options, or run without --resume to start over")
    rng, want = ckpt["rng"], torch.get_rng_state()
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != want.shape:
        raise _invalid(path, f"its RNG state is not a uint8 tensor of shape {tuple(want.shape)}")
    elapsed = ckpt["elapsed"]
    if not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool) or not (math.isfinite(elapsed)
                                                                                  and elapsed >= 0):
        raise _invalid(path, f"elapsed={elapsed!r} is not a non-negative number of seconds")
    return ckpt


def _accuracy_row(row: Any, n_tasks: int) -> bool:
    return (isinstance(row, list) and len(row) == n_tasks
            and all(a is None or isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1
                    for a in row))


def check_lifelong(ckpt: Any, path: str | Path, identity: dict[str, Any], *, n_tasks: int, epochs: int,
                   offline: bool) -> dict[str, Any]:
    """The lifelong runner's checkpoint, checked; returns it. Online learners checkpoint at (task, 0) after a
    task and at (task, epoch >= 1) inside one; offline learners only at (0, epoch >= 1)."""
    path = Path(path)
    ckpt = _common(ckpt, path, identity, ("identity", "learner", "rows", "task", "epoch", "elapsed", "rng"))
    task = _int_in(ckpt, "task", 0, 0 if offline else n_tasks, path)
    epoch = _int_in(ckpt, "epoch", 1 if offline else 0, epochs - 1, path)
    if task == n_tasks and epoch:
        raise _invalid(path, f"epoch={epoch} after the last task")
    if not isinstance(ckpt["learner"], dict):
        raise _invalid(path, "its learner state is not a mapping")
    rows = ckpt["rows"]
    if not isinstance(rows, list) or len(rows) != (0 if offline else task) \
            or not all(_accuracy_row(r, n_tasks) for r in rows):
        raise _invalid(path, f"its accuracy rows do not match task={task} of {n_tasks}")
    return ckpt


def check_multi_output(ckpt: Any, path: str | Path, identity: dict[str, Any], *, epochs: int) -> dict[str, Any]:
    """The multi-output runner's checkpoint (written after every epoch), checked; returns it."""
    path = Path(path)
    ckpt = _common(ckpt, path, identity, ("identity", "epoch", "model", "stepper", "best", "history", "elapsed",
                                          "rng", "au"))
    epoch = _int_in(ckpt, "epoch", 1, epochs, path)
    for key in ("model", "stepper", "best"):
        if not isinstance(ckpt[key], dict):
            raise _invalid(path, f"its {key} state is not a mapping")
    if not isinstance(ckpt["history"], list) or len(ckpt["history"]) != epoch:
        raise _invalid(path, f"its history does not have one entry per epoch (epoch={epoch})")
    if ckpt["au"] is not None and not isinstance(ckpt["au"], dict):
        raise _invalid(path, "its AU recorder state is not a mapping")
    return ckpt


@contextmanager
def restoring(path: str | Path) -> Iterator[None]:
    """Restore a learner/model/optimizer state inside this: a state that does not fit is one line."""
    try:
        yield
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        first = " ".join(str(e).split())[:160] or type(e).__name__
        raise ArtifactError(f"checkpoint {path} does not fit this run ({first}); delete it or run without "
                            "--resume to start over") from None
