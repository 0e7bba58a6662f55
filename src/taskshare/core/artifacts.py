"""Per-task artifacts: one task's tensors alone, as ``NAME.safetensors`` plus a small ``NAME.json``.

The JSON records the format version, the task name, every saved tensor's shape/dtype/kind, the slots that
were left out because they equal the base (``omitted``; e.g. TAPS's inactive deltas), free-form method
metadata, and the fingerprint of the base network's shared tensors. The same fingerprint is stored in the
safetensors header, so a sidecar that does not belong to its tensor file is detected. Loading onto a
different base network is an error that says so.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from taskshare.core.serialize import atomic_write_json, load_tensors, read_json, save_tensors
from taskshare.core.tasktensors import TaskTensors
from taskshare.errors import ArtifactError

FORMAT = "taskshare-task/1"


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """`path` with or without suffix -> (tensor file, sidecar JSON)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_task(tt: TaskTensors, task: str, path: str | Path, *, omit: Iterable[str] = (),
              meta: dict[str, Any] | None = None) -> int:
    """Save `task`'s tensors (minus `omit`, which must equal the base on load). Returns bytes written."""
    tensors = {n: t for n, t in tt.tensors(task).items() if n not in set(omit)}
    fingerprint = tt.fingerprint()
    entries = {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                   "kind": "param" if tt.is_param(n) else "buffer",
                   "trainable": bool(t.requires_grad)} for n, t in tensors.items()}
    sidecar = {"format": FORMAT, "task": task, "base_fingerprint": fingerprint,
               "tensors": entries, "omitted": sorted(set(omit)), "meta": meta or {}}
    st_path, json_path = artifact_paths(path)
    size = save_tensors(st_path, tensors, {"format": FORMAT, "task": task, "base_fingerprint": fingerprint})
    atomic_write_json(json_path, sidecar)
    return size + json_path.stat().st_size


def read_sidecar(path: str | Path) -> dict[str, Any]:
    _, json_path = artifact_paths(path)
    side = read_json(json_path, "artifact metadata")
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        raise ArtifactError(f"{json_path} is not a taskshare task artifact (format {FORMAT!r} expected)")
    return side


def load_task(tt: TaskTensors, path: str | Path, task: str | None = None, *, replace: bool = False) -> str:
    """Add the task saved at `path` to `tt` (under `task`, default: its saved name). Returns the task name.

    Raises ArtifactError when the files are corrupted, disagree with each other, do not fit `tt`'s slots,
    or were saved on a different base network.
    """
    st_path, json_path = artifact_paths(path)
    side = read_sidecar(path)
    tensors, header = load_tensors(st_path, "artifact")
    fp = tt.fingerprint()
    if header.get("base_fingerprint") != side["base_fingerprint"]:
        raise ArtifactError(f"{st_path.name} and {json_path.name} belong to different saves: "
                            "copy both files of one artifact together")
    if side["base_fingerprint"] != fp:
        raise ArtifactError(f"artifact {st_path} was saved on a different base network "
                            f"(fingerprint {side['base_fingerprint'][:12]} != {fp[:12]}): "
                            "load it onto the base model it was trained with")
    expected = side["tensors"]
    if set(tensors) != set(expected):
        raise ArtifactError(f"artifact {st_path} is corrupted: its tensors do not match {json_path.name}")
    missing = set(tt.slots) - set(tensors) - set(side["omitted"])
    unknown = set(tensors) - set(tt.slots)
    if unknown or missing:
        bad = sorted(unknown or missing)[0]
        raise ArtifactError(f"artifact {st_path} does not fit this model: slot {bad!r} "
                            f"{'is not in the model' if unknown else 'is missing'}; "
                            "build the model with the same method and options as when it was saved")
    for name, entry in expected.items():
        if list(tensors[name].shape) != entry["shape"]:
            raise ArtifactError(f"artifact {st_path} is corrupted: {name} has shape {list(tensors[name].shape)}, "
                                f"metadata says {entry['shape']}")
    name = task or side["task"]
    if replace and name in tt:
        tt.remove_task(name)
    trainable = [n for n, e in expected.items() if e.get("trainable")]
    tt.add_task(name, tensors, trainable=trainable)
    return name


def artifact_bytes(path: str | Path) -> int:
    st_path, json_path = artifact_paths(path)
    return st_path.stat().st_size + json_path.stat().st_size


def describe(path: str | Path) -> str:
    side = read_sidecar(path)
    n = sum(int(torch.Size(e["shape"]).numel()) for e in side["tensors"].values())
    return json.dumps({"task": side["task"], "tensors": len(side["tensors"]), "elements": n,
                       "base_fingerprint": side["base_fingerprint"][:12]})
