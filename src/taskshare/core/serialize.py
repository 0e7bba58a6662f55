"""Atomic, pickle-free writing of tensors and JSON.

Everything taskshare writes goes through here: safetensors for tensors, JSON for the rest, each written
to a temporary file in the target directory and renamed into place, so an interrupted write never
leaves a half-written file where a good one was.

`flatten_state` turns a nested structure of dicts, lists, numbers, strings and tensors (an optimizer
state_dict, a learner's state) into a flat {key: tensor} map plus a JSON skeleton; `unflatten_state`
reverses it. Together they give checkpoints without pickle.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from taskshare.errors import ArtifactError

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_UMASK = os.umask(0o022)  # read the process umask (mkstemp files are 0600; written files get the usual mode)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG, atomically (rendered in memory, then atomic_write_bytes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{what} {path} not found: check the path") from None
    except IsADirectoryError:
        raise ArtifactError(f"{what} {path} is a folder, not a file: remove it or point to the file") from None
    except OSError as e:
        raise ArtifactError(f"{what} {path} cannot be read ({e.strerror}): check its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} {path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}): "
                            "the file is corrupted; re-create it") from None


def canonical_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header written deterministically.

    safetensors writes ``__metadata__`` in hash-map order, which differs between processes; here every key is
    sorted, separators are compact and the header is space-padded to a multiple of 8 bytes (the format's
    alignment). Tensor offsets are relative to the data section, so the data bytes are kept as they are.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes, the same for the same input in every process; tensors are made contiguous, detached
    CPU copies (views and shared storage are fine)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return canonical_header(st_save(flat, metadata=metadata))


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> int:
    """Atomically write a safetensors file; returns its size in bytes."""
    data = tensors_to_bytes(tensors, metadata)
    atomic_write_bytes(path, data)
    return len(data)


def load_tensors(path: str | os.PathLike, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: (tensors, metadata). A damaged file is an ArtifactError, never a crash."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{what} {path} not found: check the path") from None
    except IsADirectoryError:
        raise ArtifactError(f"{what} {path} is a folder, not a file: remove it or point to the file") from None
    except OSError as e:
        raise ArtifactError(f"{what} {path} cannot be read ({e.strerror}): check its permissions") from None
    try:
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise ArtifactError(f"{what} {path} is corrupted or not a safetensors file ({str(e).splitlines()[0]}): "
                            "re-create it") from None
    return tensors, header.get("__metadata__", {}) or {}


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested structure into (JSON skeleton, {key: tensor}).

    Dict keys become strings; int keys (as in optimizer state) are kept through a marker.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[path] = o
            return {_TENSOR: path}
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise TypeError(f"cannot serialise dict key {k!r} at {path}")
                key = f"i:{k}" if isinstance(k, int) else f"s:{k}"
                out[key] = walk(v, f"{path}/{k}")
            return {"__dict__": out}
        if isinstance(o, tuple):
            return {_TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(o)]}
        if isinstance(o, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(o)]
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f"cannot serialise {type(o).__name__} at {path or '/'}: only tensors, numbers, "
                        "strings, lists, tuples and dicts")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            if _TENSOR in o:
                return tensors[o[_TENSOR]]
            if _TUPLE in o:
                return tuple(walk(v) for v in o[_TUPLE])
            return {(int(k[2:]) if k.startswith("i:") else k[2:]): walk(v) for k, v in o["__dict__"].items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(skeleton)


def save_state(path: str | os.PathLike, state: Any, metadata: dict[str, str] | None = None) -> int:
    """Atomically write a nested state (see flatten_state) as ONE safetensors file with the skeleton in its header."""
    skeleton, tensors = flatten_state(state)
    meta = dict(metadata or {})
    meta["skeleton"] = json.dumps(skeleton)
    return save_tensors(path, tensors, meta)


def load_state(path: str | os.PathLike, what: str = "checkpoint") -> tuple[Any, dict[str, str]]:
    tensors, meta = load_tensors(path, what)
    if "skeleton" not in meta:
        raise ArtifactError(f"{what} {path} has no state skeleton: it was not written by taskshare.save_state")
    try:
        skeleton = json.loads(meta.pop("skeleton"))
        return unflatten_state(skeleton, tensors), meta
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        first = " ".join(f"{type(e).__name__}: {e}".split())[:120]
        raise ArtifactError(f"{what} {path} is corrupted ({first} in its skeleton): re-create it") from None
