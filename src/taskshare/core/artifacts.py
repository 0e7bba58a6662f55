"""Per-task artifacts: one task's tensors alone, as ``NAME.safetensors`` plus a small ``NAME.json``.

The JSON records the format version, the task name and method, every saved tensor's shape/dtype/kind, the
slots that were left out because they equal the base (``omitted``; e.g. TAPS's inactive deltas), free-form
method metadata, the fingerprint of the base network's shared tensors and a sha256 of the task's tensors
(names, dtypes, shapes, bytes). Format, task, method, fingerprint and checksum are stored in the safetensors
header too, with a sha256 of the sidecar's content (``sidecar_sha256``, over its canonical JSON), so a sidecar
that does not belong to its tensor file, an edited sidecar (a schema error, or any changed value such as a
method's metadata), a tensor of another dtype or shape, or modified bytes are each a one-line ArtifactError
(`read_artifact`). Loading onto a different base network is an error that says so.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from taskshare.core.serialize import atomic_write_json, load_tensors, read_json, save_tensors
from taskshare.core.tasktensors import TaskTensors
from taskshare.errors import ArtifactError

FORMAT = "taskshare-task/3"  # /2: task, method and a content checksum in the header; /3: the sidecar's sha256 too
_KINDS = ("param", "buffer")


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """`path` with or without suffix -> (tensor file, sidecar JSON)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sidecar_sha256(side: dict[str, Any]) -> str:
    """sha256 of a sidecar's canonical JSON (sorted keys, compact separators, ASCII): whitespace and key order
    do not count, every value does."""
    text = json.dumps(side, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_task(tt: TaskTensors, task: str, path: str | Path, *, omit: Iterable[str] = (),
              meta: dict[str, Any] | None = None) -> int:
    """Save `task`'s tensors (minus `omit`, which must equal the base on load). Returns bytes written."""
    tensors = {n: t for n, t in tt.tensors(task).items() if n not in set(omit)}
    params = {n for n in tensors if tt.is_param(n)}
    return write_artifact(path, task, tensors, params, tt.fingerprint(), omit=omit, meta=meta)


def write_artifact(path: str | Path, task: str, tensors: dict[str, torch.Tensor], params: set[str],
                   base_fingerprint: str, *, omit: Iterable[str] = (), meta: dict[str, Any] | None = None) -> int:
    """The artifact of one task in the checked format: `tensors` (those named in `params` are parameters, the
    rest buffers), the fingerprint of the base they go onto, and free-form `meta` (``meta["method"]`` is
    recorded as the method). Every writer of task artifacts goes through here. Returns bytes written."""
    entries = {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                   "kind": "param" if n in params else "buffer",
                   "trainable": bool(t.requires_grad) and n in params} for n, t in tensors.items()}
    method = str((meta or {}).get("method", ""))
    sha = content_sha256(tensors)
    sidecar = {"format": FORMAT, "task": task, "method": method, "base_fingerprint": base_fingerprint, "sha256": sha,
               "tensors": entries, "omitted": sorted(set(omit)), "meta": meta or {}}
    try:  # as it will read back (int keys become strings, tuples lists): the digest is of what is on disk
        sidecar = json.loads(json.dumps(sidecar))
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_task({task!r}): meta must be JSON-serialisable ({e})") from None
    st_path, json_path = artifact_paths(path)
    size = save_tensors(st_path, tensors, {"format": FORMAT, "task": task, "method": method,
                                           "base_fingerprint": base_fingerprint, "sha256": sha,
                                           "sidecar_sha256": sidecar_sha256(sidecar)})
    atomic_write_json(json_path, sidecar)
    return size + json_path.stat().st_size


_SIDECAR = {"format": str, "task": str, "method": str, "base_fingerprint": str, "sha256": str, "tensors": dict,
            "omitted": list, "meta": dict}
_ENTRY = {"shape": list, "dtype": str, "kind": str, "trainable": bool}


def _check_sidecar(side: Any, json_path: Path) -> dict[str, Any]:
    """The sidecar's schema, field by field: one-line ArtifactError naming the first problem."""
    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"artifact metadata {json_path} {what}: re-export the task (or restore the file)")

    if not isinstance(side, dict):
        raise bad("is not a JSON object")
    if side.get("format") != FORMAT:
        raise ArtifactError(f"{json_path} is not a taskshare task artifact of format {FORMAT!r} (found "
                            f"{str(side.get('format'))[:40]!r}): re-export it with this taskshare version")
    for key, tp in _SIDECAR.items():
        if not isinstance(side.get(key), tp):
            raise bad(f"has no {key!r} of type {tp.__name__}")
    for name, entry in side["tensors"].items():
        if not isinstance(entry, dict):
            raise bad(f"describes tensor {name!r} with a {type(entry).__name__}, not an object")
        for key, tp in _ENTRY.items():
            if not isinstance(entry.get(key), tp):
                raise bad(f"gives tensor {name!r} no {key!r} of type {tp.__name__}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"]):
            raise bad(f"gives tensor {name!r} an invalid shape {str(entry['shape'])[:40]}")
        if entry["kind"] not in _KINDS:
            raise bad(f"gives tensor {name!r} the kind {entry['kind'][:20]!r}, not one of {', '.join(_KINDS)}")
        if entry["trainable"] and entry["kind"] != "param":
            raise bad(f"marks buffer {name!r} trainable")
    if not all(isinstance(n, str) for n in side["omitted"]):
        raise bad("lists a non-name in 'omitted'")
    both = sorted(set(side["omitted"]) & set(side["tensors"]))
    if both:
        raise bad(f"lists tensor {both[0]!r} as both saved and omitted")
    return side


def read_sidecar(path: str | Path) -> dict[str, Any]:
    _, json_path = artifact_paths(path)
    return _check_sidecar(read_json(json_path, "artifact metadata"), json_path)


def read_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(sidecar, tensors) of the artifact at `path`, after checking that the two files belong together and
    agree: task, method, base fingerprint and checksum in the header; every tensor's name, shape and dtype;
    the content checksum of the tensors. Any mismatch is a one-line ArtifactError."""
    st_path, json_path = artifact_paths(path)
    side = read_sidecar(path)
    tensors, header = load_tensors(st_path, "artifact")
    if header.get("format") != FORMAT:
        raise ArtifactError(f"artifact {st_path} is not a tensor file of format {FORMAT!r} (its header says "
                            f"{str(header.get('format'))[:40]!r}): copy it together with its own "
                            f"{json_path.name}, or re-export the task")
    for key in ("task", "method", "base_fingerprint", "sha256"):
        if header.get(key) != side[key]:
            raise ArtifactError(f"{st_path.name} and {json_path.name} belong to different saves ({key} "
                                f"{str(header.get(key))[:40]!r} != {side[key][:40]!r}): copy both files of one "
                                "artifact together")
    expected = side["tensors"]
    if set(tensors) != set(expected):
        odd = sorted(set(tensors) ^ set(expected))[0]
        raise ArtifactError(f"artifact {st_path} is corrupted: tensor {odd!r} is in only one of its two files; "
                            "re-export the task")
    for name, entry in expected.items():
        t = tensors[name]
        if list(t.shape) != entry["shape"] or str(t.dtype).removeprefix("torch.") != entry["dtype"]:
            raise ArtifactError(f"artifact {st_path} is corrupted: {name} is {str(t.dtype).removeprefix('torch.')} "
                                f"{list(t.shape)}, its metadata says {entry['dtype']} {entry['shape']}; re-export "
                                "the task")
    if content_sha256(tensors) != side["sha256"]:
        raise ArtifactError(f"artifact {st_path}: content checksum mismatch, the file was modified or corrupted; "
                            "re-export the task")
    if header.get("sidecar_sha256") != sidecar_sha256(side):
        raise ArtifactError(f"artifact metadata {json_path} was edited after the save (its sha256 differs from the "
                            f"one recorded in {st_path.name}): restore the file or re-export the task")
    return side, tensors


def load_task(tt: TaskTensors, path: str | Path, task: str | None = None, *, replace: bool = False) -> str:
    """Add the task saved at `path` to `tt` (under `task`, default: its saved name). Returns the task name.

    Raises ArtifactError when the files are corrupted, disagree with each other, do not fit `tt`'s slots,
    or were saved on a different base network.
    """
    st_path, _ = artifact_paths(path)
    side, tensors = read_artifact(path)
    fp = tt.fingerprint()
    if side["base_fingerprint"] != fp:
        raise ArtifactError(f"artifact {st_path} was saved on a different base network "
                            f"(fingerprint {side['base_fingerprint'][:12]} != {fp[:12]}): "
                            "load it onto the base model it was trained with")
    expected = side["tensors"]
    missing = set(tt.slots) - set(tensors) - set(side["omitted"])
    unknown = set(tensors) - set(tt.slots)
    if unknown or missing:
        bad = sorted(unknown or missing)[0]
        raise ArtifactError(f"artifact {st_path} does not fit this model: slot {bad!r} "
                            f"{'is not in the model' if unknown else 'is missing'}; "
                            "build the model with the same method and options as when it was saved")
    name = task or side["task"]
    if replace and name in tt:
        tt.remove_task(name)
    trainable = [n for n, e in expected.items() if e["trainable"]]
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
