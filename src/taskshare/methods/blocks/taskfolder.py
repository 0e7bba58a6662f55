"""Self-describing task folders: what `TaskModel.save` writes and `taskshare.load` reads.

    FOLDER/manifest.json          schema "taskshare-model/1" (below)
    FOLDER/tasks/<name>.safetensors + .json   one artifact per task (`core.artifacts`, checksummed)
    FOLDER/base.safetensors       the shared tensors, unless the base can be rebuilt from installed weights

The manifest records: the taskshare version; the method and its options; the base (how to rebuild it, the
class name, the fingerprint of its shared tensors, whether base.safetensors is there); the input shape and
preprocessing; per task its file, number of classes, class names, parameter count and tensor checksum.
Loading checks every one of them and says in one line what differs. The manifest is written last, so a
folder whose save was interrupted has no manifest (or the previous one) and is never half-read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskshare._version import __version__
from taskshare.core.artifacts import content_sha256, read_artifact, read_sidecar, write_artifact
from taskshare.core.paths import safe_name
from taskshare.core.serialize import atomic_write_json, load_tensors, read_json, save_tensors
from taskshare.errors import ArtifactError, ConfigError
from taskshare.models import TaskNet, build_backbone
from taskshare.models.mobilenetv2 import mobilenet_v2

SCHEMA = "taskshare-model/1"
MANIFEST = "manifest.json"


def builder_of(model: nn.Module) -> dict[str, Any] | None:
    """How taskshare can rebuild `model` (a taskshare backbone/TaskNet/mobilenet_v2), or None (your own)."""
    if isinstance(model, TaskNet):
        inner = builder_of(model.backbone)
        return {"name": "tasknet", "backbone": inner} if inner else None
    found = getattr(model, "taskshare_builder", None)
    return dict(found) if isinstance(found, dict) else None


def rebuild(builder: dict[str, Any]) -> nn.Module:
    """The base network described by `builder` (`builder_of`), weights from their seed or installed package."""
    name = builder.get("name")
    if name == "tasknet":
        return TaskNet(rebuild(builder["backbone"]))
    if name == "mobilenet_v2":
        return mobilenet_v2(pretrained=True)
    if name == "build_backbone":
        return build_backbone(builder["backbone"], tuple(builder["input_shape"]), builder["seed"],
                              width=builder["width"], image_size=builder["image_size"],
                              hidden=tuple(builder["hidden"]) if builder.get("hidden") else None)
    raise ArtifactError(f"manifest names an unknown base builder {str(name)[:40]!r}: pass the model yourself, "
                        "taskshare.load(folder, model=...)")


def _task_file(name: str, taken: set[str]) -> str:
    stem, i = safe_name(name), 1
    while stem.lower() in taken:   # case-insensitive file systems
        stem, i = f"{safe_name(name)}-{i}", i + 1
    taken.add(stem.lower())
    return f"tasks/{stem}.safetensors"


def save_folder(tm, folder: str | Path, tasks=None, include_base: bool | None = None) -> Path:
    folder = Path(folder)
    names = list(tasks) if tasks is not None else tm.tasks
    for n in names:
        tm.tt.tensors(n)  # one-line error for an unknown task
    if not names:
        raise ConfigError("nothing to save: add a task first (tm.add_task)")
    builder = builder_of(tm.model)
    fingerprint = tm.tt.fingerprint()
    if include_base is None:   # the base is rebuilt from its builder when it is still the one wrapped
        include_base = builder is None or fingerprint != tm.base_fingerprint
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    entries, taken = {}, set()
    for n in names:
        rel = _task_file(n, taken)
        tensors = tm.tt.tensors(n)
        write_artifact(folder / rel, n, tensors, {k for k in tensors if tm.tt.is_param(k)}, fingerprint,
                       meta={"method": tm.method})
        entries[n] = {"file": rel, "num_classes": _classes(tm, n), "class_names": tm.class_names.get(n, []),
                      "parameters": tm.num_parameters(n), "sha256": content_sha256(tensors)}
    if include_base:
        save_tensors(folder / "base.safetensors", {k: v.detach() for k, v in tm.tt.shared_named_tensors().items()},
                     {"base_fingerprint": fingerprint})
    atomic_write_json(folder / MANIFEST, {
        "schema": SCHEMA, "taskshare": __version__, "method": tm.method, "options": tm.options, "seed": tm.seed,
        "base": {"class": type(tm.model).__name__, "builder": builder, "fingerprint": fingerprint,
                 "file": "base.safetensors" if include_base else None},
        "input_shape": list(tm.input_shape) if tm.input_shape else _builder_shape(builder),
        "preprocessing": tm.preprocessing, "tasks": entries})
    return folder


def _classes(tm, task: str) -> int | None:
    if tm.head_name is None:
        return None
    w = tm.tt.tensors(task).get(f"{tm.head_name}.weight")
    return int(w.shape[0]) if w is not None else None


def _builder_shape(builder: dict[str, Any] | None) -> list[int] | None:
    while builder and builder.get("name") == "tasknet":
        builder = builder["backbone"]
    return builder.get("input_shape") if builder else None


def write_run_manifest(art_dir: Path, learner, tasks: list, preprocessing: dict[str, Any]) -> bool:
    """The manifest of a `taskshare run`'s artifacts folder (base.safetensors and the task files the learner
    wrote), so that `taskshare.load`, `predict` and `export` read a run like a saved TaskModel. Only for
    learners whose tasks are per-task tensors of a taskshare network (not PAR); returns whether written."""
    from taskshare.methods.blocks import gating

    tt, net = getattr(learner, "tt", None), getattr(learner, "net", None)
    builder = builder_of(net) if net is not None else None
    if tt is None or builder is None or tt.model is not net:
        return False
    gated = gating.gated_layers(net)
    if gated:
        o = learner.options
        method, options = "taps", {"head": "head", "layer_types": list(o.layer_types), "lambda_": float(o.lambda_),
                                   "penalty_mode": o.penalty, "tau": float(o.tau), "score_init": float(o.score_init)}
    else:
        method, options = "slots", {"head": "head", "slots": list(tt.slots)}
    entries = {}
    for task in tasks:
        rel = f"{safe_name(task.name)}.safetensors"
        entries[task.name] = {"file": rel, "num_classes": task.num_classes, "class_names": list(task.classes),
                              "parameters": learner.added_parameters(task.name),
                              "sha256": read_sidecar(art_dir / rel)["sha256"]}  # as just written (TAPS omits)
    atomic_write_json(art_dir / MANIFEST, {
        "schema": SCHEMA, "taskshare": __version__, "method": method, "options": options, "seed": 0,
        "base": {"class": type(net).__name__, "builder": builder, "fingerprint": tt.fingerprint(),
                 "file": "base.safetensors"},
        "input_shape": list(tasks[0].input_shape), "preprocessing": preprocessing, "tasks": entries,
        "run": {"method": learner.name}})
    return True


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder: give the folder that TaskModel.save wrote")
    path = folder / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{folder} has no {MANIFEST}: it was not written by TaskModel.save (or the save was "
                            "interrupted); save it again")
    m = read_json(path, "manifest")
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        found = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise ArtifactError(f"{path} has schema {str(found)[:40]!r}, this taskshare reads {SCHEMA!r}: save it again "
                            "with this version")
    for key, tp in {"method": str, "options": dict, "base": dict, "tasks": dict, "preprocessing": dict}.items():
        if not isinstance(m.get(key), tp):
            raise ArtifactError(f"{path} has no {key!r} of type {tp.__name__}: the manifest was edited; save again")
    return m


def prepare_load(folder: str | Path, model: nn.Module | None) -> tuple[dict[str, Any], nn.Module, dict[str, Any]]:
    """(manifest, the base network, TaskModel keyword arguments) for loading `folder`."""
    m = read_manifest(folder)
    base = m["base"]
    if model is None:
        if not base.get("builder"):
            raise ArtifactError(f"{folder} holds tasks for your own {base.get('class')} model: rebuild it and pass "
                                "it, taskshare.load(folder, model=...)")
        model = rebuild(base["builder"])
    elif type(model).__name__ != base.get("class"):
        raise ArtifactError(f"{folder} was saved on a {base.get('class')}, not a {type(model).__name__}: pass the "
                            "same kind of model")
    kwargs = {"seed": int(m.get("seed", 0)), "input_shape": m.get("input_shape"),
              "preprocessing": m["preprocessing"], **_wrap_options(m["method"], dict(m["options"]))}
    return m, model, kwargs


def fill(tm, folder: str | Path, m: dict[str, Any], tasks=None):
    """Load the base tensors (if saved) and the tasks of manifest `m` into the freshly wrapped `tm`."""
    folder, base = Path(folder), m["base"]
    if base.get("file"):
        _load_base(tm, folder / base["file"])
    fp = tm.tt.fingerprint()
    if fp != base.get("fingerprint"):
        raise ArtifactError(f"the base network differs from the one {folder} was saved with (fingerprint "
                            f"{fp[:12]} != {str(base.get('fingerprint'))[:12]}): pass the same model, or install "
                            "the same weight package version")
    tm.base_fingerprint = "" if base.get("file") else fp   # a base read from a file is saved with the tasks
    for name in (list(tasks) if tasks is not None else list(m["tasks"])):
        _load_task(tm, folder, name, m["tasks"])
    return tm


def _wrap_options(method: str, opts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"head": opts.get("head")}
    if method == "patches":
        out["kinds"] = opts["kinds"]
    elif method == "taps":
        out.update(layer_types=opts["layer_types"], lambda_=opts["lambda_"], penalty_mode=opts["penalty_mode"],
                   tau=opts.get("tau", 0.1), score_init=opts.get("score_init", 0.15))
    elif method == "slots":
        out["slots"] = opts["slots"]
    return out


def _load_base(tm, path: Path) -> None:
    tensors, _ = load_tensors(path, "base weights")
    shared = tm.tt.shared_named_tensors()
    if set(tensors) != set(shared):
        odd = sorted(set(tensors) ^ set(shared))[0]
        raise ArtifactError(f"{path} does not fit this model: tensor {odd!r} is in only one of them; pass the model "
                            "the folder was saved with")
    with torch.no_grad():
        for k, t in shared.items():
            if t.shape != tensors[k].shape:
                raise ArtifactError(f"{path}: {k} is {list(tensors[k].shape)}, the model has {list(t.shape)}; pass "
                                    "the model the folder was saved with")
            t.copy_(tensors[k])


def _load_task(tm, folder: Path, name: str, entries: dict[str, Any]) -> None:
    if name not in entries:
        raise ArtifactError(f"{folder} has no task {name!r}; it has {', '.join(entries) or 'none'}")
    entry = entries[name]
    side, tensors = read_artifact(folder / entry["file"])
    if side["task"] != name or content_sha256(tensors) != entry.get("sha256"):
        raise ArtifactError(f"{folder / entry['file']} is not the file the manifest lists for task {name!r} "
                            "(checksum differs): copy the whole folder again")
    if side["base_fingerprint"] != tm.tt.fingerprint():
        raise ArtifactError(f"task {name!r} in {folder} was saved on another base than the folder's: save again")
    missing = set(tm.tt.slots) - set(tensors) - set(side["omitted"])   # omitted: equal to the base (TAPS)
    if missing or set(tensors) - set(tm.tt.slots):
        odd = sorted(missing or set(tensors) - set(tm.tt.slots))[0]
        raise ArtifactError(f"task {name!r} does not fit the wrapped model (slot {odd!r}): the manifest's method "
                            "options were edited; save again")
    trainable = [k for k, e in side["tensors"].items() if e["trainable"]]
    tm.tt.add_task(name, tensors, trainable=trainable)
    tm.class_names[name] = list(entry.get("class_names") or [])
    if tm.tt.active is None:
        tm.tt.activate(name)
