"""The PEFT-style surface: `wrap` a model, train tasks in your own loop, `save`, `load` (see `taskmodel`)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from taskshare.methods.blocks.taskfolder import SCHEMA, builder_of, fill, prepare_load, read_manifest
from taskshare.methods.blocks.taskmodel import METHODS, TaskModel

__all__ = ["METHODS", "SCHEMA", "TaskModel", "builder_of", "load", "read_manifest", "wrap"]


def wrap(model: nn.Module, method: str = "patches", **options) -> TaskModel:
    """`model` made task-aware for `method` (patches | taps | head); options: see `TaskModel`. The model is
    changed in place (TAPS gates its layers) and its shared parameters are frozen."""
    return TaskModel(model, method, **options)


def load(folder: str | Path, model: nn.Module | None = None, tasks=None) -> TaskModel:
    """The TaskModel saved in `folder` by `TaskModel.save`, rebuilt from the folder alone when its base is a
    taskshare network (weights from their seed or installed package, hash-checked), else onto your `model`."""
    m, model, kwargs = prepare_load(folder, model)
    return fill(TaskModel(model, m["method"], **kwargs), folder, m, tasks)
