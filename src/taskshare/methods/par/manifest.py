"""The manifest of a finished PAR run's artifacts folder: what `taskshare.api.par_model.PARModel` reads.

A PAR run's ``OUT/par/artifacts`` holds one artifact per task (`artifacts.py`: an expert's owner carries the
whole expert, the others their head and statistics on it). At the end of the run the driver writes

    manifest.json   schema "taskshare-par/1": the taskshare version, the run's training settings and PAR
                    options, the input shape and preprocessing, and the tasks in training order with
                    their file, classes, class names, parameter count and checksum

`PARModel.load(folder)` (`api/par_model.py`) rebuilds the run's tasks from it for `taskshare predict`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from taskshare._version import __version__
from taskshare.core.artifacts import read_sidecar
from taskshare.core.paths import safe_name
from taskshare.core.serialize import atomic_write_json, read_json

__all__ = ["MANIFEST", "SCHEMA", "is_par_folder", "write_manifest"]

SCHEMA = "taskshare-par/1"
MANIFEST = "manifest.json"


def write_manifest(par, art_dir: Path, tasks: list, preprocessing: dict[str, Any]) -> bool:
    """The manifest of a PAR run's artifacts folder (written after the task artifacts); returns True."""
    entries = []
    for task in tasks:
        rel = f"{safe_name(task.name)}.safetensors"
        entries.append({"name": task.name, "file": rel, "num_classes": task.num_classes,
                        "class_names": [str(c) for c in task.classes],
                        "parameters": par.added_parameters(task.name),
                        "sha256": read_sidecar(art_dir / rel)["sha256"]})
    atomic_write_json(art_dir / MANIFEST, {"schema": SCHEMA, "taskshare": __version__, "method": "par",
                                           "settings": dataclasses.asdict(par.cfg),
                                           "options": dataclasses.asdict(par.options),
                                           "input_shape": list(par.input_shape),
                                           "preprocessing": preprocessing, "tasks": entries})
    return True


def is_par_folder(folder: str | Path) -> bool:
    path = Path(folder) / MANIFEST
    return path.is_file() and read_json(path, "manifest").get("schema") == SCHEMA
