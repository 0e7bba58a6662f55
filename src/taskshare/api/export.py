"""One task as a standalone model: `export_task` writes it, `load_exported` reads it back.

- ``safetensors``: the merged network's state dict (TAPS deltas folded into the weights, patches' BN statistics
  folded into scale and bias) plus, in the header, how to rebuild the architecture (the base's builder, the head
  and its number of classes). `load_exported` rebuilds it; no taskshare per-task machinery is involved.
- ``torchscript``: `torch.jit.trace` of the merged network on an input of the manifest's shape (it takes
  batches of that shape); load it with ``torch.jit.load`` anywhere PyTorch runs (no taskshare needed).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from taskshare.methods.blocks.taskfolder import builder_of, rebuild
from taskshare.core.serialize import atomic_write_bytes, load_tensors, save_tensors
from taskshare.errors import ArtifactError, ConfigError

FORMATS = ("safetensors", "torchscript")
EXPORT_SCHEMA = "taskshare-export/1"

__all__ = ["FORMATS", "export_task", "load_exported"]


def _set_head(model: nn.Module, head: str, num_classes: int) -> None:
    parent_name, _, leaf = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, leaf)
    setattr(parent, leaf, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def export_task(tm, task: str, path: str | Path, fmt: str = "safetensors") -> Path:
    """Write `task` of TaskModel `tm` as a standalone model in format `fmt` (see module docstring)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose {' or '.join(FORMATS)}")
    merged = tm.merged(task)
    path = Path(path)
    if fmt == "torchscript":
        if not tm.input_shape:
            raise ConfigError("torchscript export needs the input shape: wrap(..., input_shape=(C, H, W))")
        example = torch.zeros(1, *tm.input_shape)
        with torch.no_grad(), warnings.catch_warnings():  # shape branches are fixed for this input shape
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(merged, example, check_trace=False)
        tmp = path.with_name(path.name + ".tmp-export")
        torch.jit.save(traced, str(tmp))
        atomic_write_bytes(path, tmp.read_bytes())
        tmp.unlink()
        return path
    builder = builder_of(tm.model)
    if builder is None:
        raise ConfigError("safetensors export rebuilds a taskshare network; for your own model use "
                          "tm.merged(task) in Python, or --format torchscript")
    head = tm.head_name
    classes = int(merged.get_submodule(head).weight.shape[0]) if head else None  # the task's, not the placeholder's
    meta = {"schema": EXPORT_SCHEMA, "builder": builder, "head": head, "num_classes": classes, "task": task,
            "input_shape": list(tm.input_shape) if tm.input_shape else None,
            "class_names": tm.class_names.get(task, [])}
    save_tensors(path, dict(merged.state_dict()), {"taskshare": json.dumps(meta)})
    return path


def load_exported(path: str | Path) -> nn.Module:
    """The network written by `export_task(..., fmt="safetensors")`, in eval mode."""
    tensors, header = load_tensors(path, "exported model")
    try:
        meta = json.loads(header["taskshare"])
        assert meta["schema"] == EXPORT_SCHEMA
    except (KeyError, ValueError, AssertionError, TypeError):
        raise ArtifactError(f"{path} is not a model exported by taskshare ({EXPORT_SCHEMA}): export it again") from None
    model = rebuild(meta["builder"])
    if meta.get("head"):
        _set_head(model, meta["head"], meta["num_classes"])
    mine = model.state_dict()
    if set(mine) != set(tensors):
        odd = sorted(set(mine) ^ set(tensors))[0]
        raise ArtifactError(f"{path} does not fit the network it names (tensor {odd!r}): export it again")
    model.load_state_dict(tensors, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
