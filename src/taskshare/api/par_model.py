"""`PARModel`: the tasks of a finished PAR run, ready to predict (`taskshare predict` on a PAR run).

A PAR run's tasks live on separate cell experts, so they are not a `TaskModel`. `PARModel.load(folder)` reads
the run's ``artifacts/manifest.json`` (`methods/par/manifest.py`), rebuilds a PAR learner with the run's
training settings and options, and loads the task artifacts in training order (every expert's owner before the
tasks on it), so its predictions equal the run's exactly. It offers what `predict` needs from a `TaskModel`:
``model(x, task=name | [name per sample])`` (for a mixed batch, classes a task lacks come out as -inf),
``input_shape``, ``preprocessing``, ``class_names`` and ``tasks``. Every mismatch is a one-line error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from taskshare.config import TrainSettings, check_options
from taskshare.core.artifacts import read_sidecar
from taskshare.core.serialize import read_json
from taskshare.errors import ArtifactError, ConfigError
from taskshare.methods.par.learner import PAR
from taskshare.methods.par.manifest import MANIFEST, SCHEMA

__all__ = ["PARModel"]


class PARModel:
    """The tasks of a PAR run, ready to predict (see the module docstring)."""

    def __init__(self, par, manifest: dict[str, Any]):
        self.par = par
        self.input_shape = tuple(manifest["input_shape"])
        self.preprocessing = manifest.get("preprocessing") or {}
        self.class_names = {t["name"]: list(t["class_names"]) for t in manifest["tasks"]}
        self.num_classes = {t["name"]: int(t["num_classes"]) for t in manifest["tasks"]}
        self.tasks = [t["name"] for t in manifest["tasks"]]

    @classmethod
    def load(cls, folder: str | Path) -> PARModel:
        """Rebuild the run's PAR learner from `folder` (OUT/par/artifacts) and load its tasks."""
        folder = Path(folder)
        m = read_json(folder / MANIFEST, "manifest")
        if m.get("schema") != SCHEMA:
            raise ArtifactError(f"{folder / MANIFEST} is not a PAR run's manifest (schema {m.get('schema')!r})")
        try:
            settings = TrainSettings(**{**m["settings"], "device": "cpu"})
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{folder / MANIFEST}: its run settings do not fit this taskshare version ({e}); "
                                "rerun with this version") from None
        options = check_options(PAR.Options, m.get("options", {}), "par")
        par = PAR(settings, options, tuple(m["input_shape"]))
        for t in m["tasks"]:  # every task, in training order: a task needs its expert's owner and its source
            path = folder / t["file"]
            if not path.is_file():
                raise ArtifactError(f"{path} is missing: the run folder is incomplete; copy it whole or rerun")
            if read_sidecar(path)["sha256"] != t["sha256"]:
                raise ArtifactError(f"{path} does not match the manifest's checksum: it was changed after the run")
            par.load_artifact(path)
        return cls(par, m)

    def eval(self) -> PARModel:
        return self

    def __call__(self, x: torch.Tensor, task: str | list[str]) -> torch.Tensor:
        names = [task] * len(x) if isinstance(task, str) else list(task)
        if len(names) != len(x):
            raise ConfigError(f"{len(names)} task names for {len(x)} inputs: give one per sample")
        for name in dict.fromkeys(names):
            if name not in self.num_classes:
                raise ConfigError(f"unknown task {name!r}: this PAR run has {', '.join(self.tasks)}")
        if len(set(names)) == 1:
            return self.par.predict(x, names[0])
        order = list(dict.fromkeys(names))
        index = {n: k for k, n in enumerate(order)}
        ids = torch.tensor([index[n] for n in names])
        out = x.new_full((len(x), max(self.num_classes[n] for n in order)), float("-inf"))
        for k, name in enumerate(order):  # one batch per task through its own expert
            rows = (ids == k).nonzero().squeeze(1)
            out[rows, :self.num_classes[name]] = self.par.predict(x[rows], name).to(out.dtype)
        return out
