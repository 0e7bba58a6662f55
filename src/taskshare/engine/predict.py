"""`taskshare predict` and `taskshare export`: use what a run (or `TaskModel.save`) wrote.

A PATH is a folder with a manifest.json (`api.folder`): a saved TaskModel, a run's ``<method>/artifacts``, or
the run folder ``<method>`` above it; a PAR run's tasks are served by `api.par_model.PARModel` (predict
only: export writes TaskModel tasks). Inputs are .npy/.npz arrays (N, *input_shape) or one sample, image files
(resized to the manifest's input shape; uint8 pixels scaled as the run's stream did, default 1/255), or .txt
files of text lines for text tasks (tokenized as the text benchmarks do).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskshare.api import load
from taskshare.api.export import export_task
from taskshare.api.par_model import PARModel
from taskshare.core.serialize import atomic_write_bytes
from taskshare.data.user import IMAGE_EXTENSIONS, load_images
from taskshare.errors import ConfigError, DataError
from taskshare.methods.par.manifest import is_par_folder

__all__ = ["export_run_task", "open_model", "predict_files", "resolve"]


def resolve(path: str | Path) -> Path:
    """The folder holding manifest.json for PATH (see module docstring); a one-line error otherwise."""
    p = Path(path)
    for cand in (p, p / "artifacts"):
        if (cand / "manifest.json").is_file():
            return cand
    if not p.exists():
        raise ConfigError(f"{p} does not exist: give a run's method folder (OUT/<method>) or a saved TaskModel folder")
    methods = sorted(d.name for d in p.iterdir() if (d / "artifacts" / "manifest.json").is_file()) if p.is_dir() else []
    if methods:
        raise ConfigError(f"{p} holds several methods' runs: name one, e.g. {p / methods[0]}")
    if (p / "artifacts" / "base.safetensors").is_file() or (p / "base.safetensors").is_file():
        raise ConfigError(f"{p} has no manifest.json: runs made before this version cannot be loaded; rerun "
                          "with this version")
    raise ConfigError(f"{p} has no manifest.json: give a run's method folder (OUT/<method>) or a TaskModel.save folder")


def _array(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot read {path} as a numpy array ({' '.join(str(e).split())[:100]}): save it with "
                        "numpy.save / numpy.savez (no pickled objects)") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            key = "x" if "x" in data.files else data.files[0] if data.files else None
            if key is None:
                raise DataError(f"{path} holds no arrays")
            return data[key]
    return data


def _scale(x: torch.Tensor, preprocessing: dict[str, Any]) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float() * float(preprocessing.get("scale") or 1 / 255)
    return x.float() if x.is_floating_point() else x


def read_inputs(paths: list[str], shape: tuple[int, ...], preprocessing: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    """(inputs, a label per sample naming where it came from) from files (see module docstring)."""
    xs, sources = [], []
    for text in paths:
        p = Path(text)
        if not p.is_file():
            raise DataError(f"input {p} is not a file: give .npy/.npz arrays, image files or .txt text lines")
        suffix = p.suffix.lower()
        if suffix in (".npy", ".npz"):
            arr = torch.from_numpy(np.ascontiguousarray(_array(p)))
            arr = arr[None] if tuple(arr.shape) == shape else arr
            if tuple(arr.shape[1:]) != shape:
                raise DataError(f"{p} has shape {tuple(arr.shape)}; this model takes (N, {', '.join(map(str, shape))})")
            xs.append(_scale(arr, preprocessing))
            sources += [f"{p.name}[{i}]" for i in range(len(arr))]
        elif suffix in IMAGE_EXTENSIONS:
            if len(shape) != 3 or shape[0] not in (1, 3):
                raise DataError(f"{p} is an image but this model takes inputs of shape {shape}")
            xs.append(_scale(load_images([p], shape[1:], grayscale=shape[0] == 1), preprocessing))
            sources.append(p.name)
        elif suffix == ".txt":
            lines = [s for s in p.read_text(encoding="utf-8").splitlines() if s.strip()]
            if len(shape) != 2 or shape[0] != 2:
                raise DataError(f"{p} holds text but this model takes inputs of shape {shape}, not text tokens")
            from taskshare.models.minilm import tokenize
            xs.append(tokenize(lines, max_length=shape[1]))
            sources += [f"{p.name}:{i + 1}" for i in range(len(lines))]
        else:
            raise DataError(f"input {p}: unknown kind {suffix!r}; give .npy, .npz, {', '.join(IMAGE_EXTENSIONS)} or .txt")
    return torch.cat(xs), sources


def open_model(path: str | Path):
    """The model at PATH: a `TaskModel` (`taskshare.load`), or for a PAR run a `PARModel` (its experts)."""
    folder = resolve(path)
    return PARModel.load(folder) if is_par_folder(folder) else load(folder)


def predict_files(path: str | Path, tasks: list[str], inputs: list[str], out: str | None, fmt: str) -> str:
    """Labels and probabilities for `inputs` under `tasks` (one for all samples, or one per sample) as CSV or
    JSON text; written atomically to `out` when given."""
    tm = open_model(path).eval()
    shape = tuple(tm.input_shape or ())
    x, sources = read_inputs(inputs, shape, tm.preprocessing)
    if len(tasks) not in (1, len(x)):
        raise ConfigError(f"--task given {len(tasks)} times for {len(x)} inputs: give one task for all, or one per "
                          "sample (a mixed batch)")
    names = tasks * len(x) if len(tasks) == 1 else tasks
    with torch.no_grad():
        probs = torch.softmax(tm(x, task=names).float(), dim=1)
    rows = []
    for i, (src, task) in enumerate(zip(sources, names)):
        k = int(torch.isfinite(probs[i]).sum()) if not torch.isnan(probs[i]).any() else probs.shape[1]
        p = probs[i, :k].nan_to_num(0.0)
        label = int(p.argmax())
        classes = tm.class_names.get(task) or []
        rows.append({"input": src, "task": task, "label": label,
                     "class": classes[label] if label < len(classes) else str(label),
                     "probability": round(float(p[label]), 6), "probabilities": [round(float(v), 6) for v in p]})
    text = json.dumps(rows, indent=1) + "\n" if fmt == "json" else _csv(rows)
    if out:
        atomic_write_bytes(out, text.encode("utf-8"))
    return text


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["input", "task", "label", "class", "probability", "probabilities"])
    for r in rows:
        w.writerow([r["input"], r["task"], r["label"], r["class"], f"{r['probability']:.6f}",
                    ";".join(f"{v:.6f}" for v in r["probabilities"])])
    return buf.getvalue()


def export_run_task(path: str | Path, task: str, fmt: str, out: str | None) -> Path:
    """`api.export.export_task` of `task` in the model at PATH; default file: PATH/exports/<task>.<ext>."""
    from taskshare.core.paths import safe_name

    folder = resolve(path)
    if is_par_folder(folder):
        raise ConfigError(f"{folder} is a PAR run: its tasks run on separate cell experts, which export does "
                          "not write; use `taskshare predict` on the run folder")
    tm = load(folder, tasks=[task])
    target = Path(out) if out else folder.parent / "exports" / f"{safe_name(task)}.{'pt' if fmt == 'torchscript' else 'safetensors'}"
    target.parent.mkdir(parents=True, exist_ok=True)
    return export_task(tm, task, target, fmt)
