"""PAR's per-task artifacts: what a task added, and what rebuilds it exactly.

`save_artifact` writes the task's own tensors (`PARTensors.tensors`: the whole expert for its owner, else the
head and the task's own BN statistics or unit), its prototypes, and in the metadata the expert's genotype,
layout and size options and the task's decision. An owner's artifact stands alone; the others' base is
their expert, identified by its fingerprint. `load_artifact` rebuilds the task: an owner's artifact its
expert (the learner needs the same ``channels``, ``cells``, ``stem_multiplier`` and ``bn``), any other
task's needs its expert's owner (and the task it started from) loaded first, with the same expert tensors.
Predictions then equal the saved learner's exactly; every mismatch is a one-line ArtifactError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from taskshare.core import save_task
from taskshare.core.artifacts import artifact_paths, read_artifact
from taskshare.errors import ArtifactError
from taskshare.methods.par.config import EXPERT_PROTOTYPES, PROTOTYPES
from taskshare.methods.par.expert import Expert, Genotype
from taskshare.methods.par.tensors import ArtifactView
from taskshare.methods.par.units import LAYOUTS, is_taps_slot, leaf
from taskshare.models import HEAD_SLOTS

__all__ = ["load_artifact", "save_artifact"]

_INFO = ("role", "owner", "layout", "genotype", "in_channels", "channels", "cells", "stem_multiplier", "bn",
         "decision")


def save_artifact(par, task: str, path: str | Path) -> int:
    """Write `task`'s artifact (safetensors + JSON); returns the bytes written."""
    expert = par.expert_of(task)
    role = par.role(task)
    tensors = dict(par.tt.tensors(task))
    params = {n for n in tensors if par.tt.is_param(n)}
    for key, store in ((PROTOTYPES, par.prototypes), (EXPERT_PROTOTYPES, par.expert_prototypes)):
        if task in store:
            tensors[key] = store[task]
    fingerprint = par.base_fingerprint() if role == "owner" else expert.tt.fingerprint()
    o = par.options
    info = {"role": role, "owner": expert.owner, "layout": expert.layout, "genotype": expert.genotype.to_dict(),
            "in_channels": expert.in_channels, "channels": o.channels, "cells": o.cells,
            "stem_multiplier": o.stem_multiplier, "bn": o.bn, "extractor": par.extractor_name,
            "decision": dict(par.decision(task))}
    return save_task(ArtifactView(task, tensors, fingerprint, params), task, path,
                     meta={"method": par.name, "par": info})


def _checked_info(par, side: dict[str, Any], st_path: Path) -> dict[str, Any]:
    """meta.par of a PAR artifact, checked against this learner's options."""
    info = side["meta"].get("par")
    if side["method"] != par.name or not isinstance(info, dict):
        raise ArtifactError(f"{st_path.name} is not a PAR task artifact (method {side['method']!r}): "
                            "load it with the method that saved it")
    missing = [k for k in _INFO if k not in info]
    if missing:
        raise ArtifactError(f"{st_path.name}: its PAR metadata has no {missing[0]!r}; re-export the task")
    if side["task"] in par.task_expert:
        raise ArtifactError(f"task {side['task']!r} is already in this PAR learner: load each artifact once")
    theirs = {k: info[k] for k in ("channels", "cells", "stem_multiplier", "bn")}
    ours = {k: getattr(par.options, k) for k in theirs}
    if theirs != ours or int(info["in_channels"]) != int(par.input_shape[0]):
        show = ", ".join(f"{k}={v}" for k, v in theirs.items())
        raise ArtifactError(f"{st_path.name} was saved by a PAR learner with {show} on {info['in_channels']}-"
                            f"channel inputs, this one has {', '.join(f'{k}={v}' for k, v in ours.items())} "
                            f"on {par.input_shape[0]}: build it with the same par options")
    return info


def _load_owner(par, name: str, info: dict, tensors: dict, trainable: list[str], st_path: Path) -> int:
    """The owner's artifact: rebuild its expert from the genotype and the saved tensors."""
    genotype = Genotype.from_dict(info["genotype"])
    net, tt = par._build(genotype, int(info["in_channels"]), 0, info["layout"])
    shared = tt.shared_named_tensors()
    slots = [n for n in tt.slots if not is_taps_slot(n)]
    ref = {**tt.base_tensors(), **shared}
    bad = sorted(set(tensors) ^ (set(shared) | set(slots)))
    if not bad:
        bad = [n for n in tensors if n not in HEAD_SLOTS and tensors[n].shape != ref[n].shape]
    if bad:
        raise ArtifactError(f"{st_path.name} does not fit this PAR learner's expert (tensor {bad[0]!r}): "
                            "it was saved with other par options")
    with torch.no_grad():
        for n, t in shared.items():
            t.copy_(tensors[n])
    init = {n: tensors[n] for n in slots}
    init.update({n: torch.zeros_like(t) for n, t in tt.base_tensors().items() if leaf(n) == "score"})
    tt.add_task(name, init, trainable=[n for n in trainable if n in slots])
    par.experts.append(Expert(genotype, int(info["in_channels"]), net, tt, [name],
                              int(info["decision"].get("n_train", 0)), info["layout"]))
    return len(par.experts) - 1


def _load_on_expert(par, name: str, info: dict, tensors: dict, trainable: list[str], fingerprint: str,
                    st_path: Path) -> int:
    """Another task's artifact: its tensors on its owner's expert (loaded before), from its source task."""
    owner, layout, decision = info["owner"], info["layout"], info["decision"]
    if owner not in par.task_expert:
        raise ArtifactError(f"{st_path.name} holds task {name!r} on the expert of task {owner!r}: "
                            f"load {owner!r}'s artifact first")
    index = par.task_expert[owner]
    expert = par.experts[index]
    if layout not in LAYOUTS:
        raise ArtifactError(f"{st_path.name} has an unknown expert layout {layout!r}")
    par._convert(expert, layout)
    fp = expert.tt.fingerprint()
    if fp != fingerprint:
        raise ArtifactError(f"{st_path.name} was saved on a different expert of {owner!r} (fingerprint "
                            f"{fingerprint[:12]} != {fp[:12]}): load it next to the artifact of {owner!r} it "
                            "was saved with")
    source = decision.get("reuse_from") or decision.get("unit_from") or owner
    if source not in expert.tt:
        raise ArtifactError(f"{st_path.name}: task {name!r} starts from task {source!r}'s tensors: "
                            f"load {source!r}'s artifact first")
    ref = expert.tt.tensors(source)
    bad = [n for n in tensors if n not in ref or (n not in HEAD_SLOTS and tensors[n].shape != ref[n].shape)]
    if bad:
        raise ArtifactError(f"{st_path.name} does not fit the expert of {owner!r} (tensor {bad[0]!r}): "
                            "it was saved with other par options")
    expert.tt.add_task(name, tensors, copy_from=source, trainable=trainable)
    expert.tasks.append(name)
    if info["role"] == "reuse":
        expert.max_train = max(expert.max_train, int(decision.get("n_train", 0)))
    return index


def load_artifact(par, path: str | Path) -> str:
    """Add the task saved by `save_artifact` at `path` to the learner `par`; returns its name."""
    st_path, _ = artifact_paths(path)
    side, tensors = read_artifact(path)  # the two files agree, checksum included
    info = _checked_info(par, side, st_path)
    name = side["task"]
    protos, expert_protos = tensors.pop(PROTOTYPES, None), tensors.pop(EXPERT_PROTOTYPES, None)
    trainable = [n for n, e in side["tensors"].items() if e.get("trainable")]
    if info["role"] == "owner":
        index = _load_owner(par, name, info, tensors, trainable, st_path)
    else:
        index = _load_on_expert(par, name, info, tensors, trainable, side["base_fingerprint"], st_path)
    par.task_expert[name] = index
    decision = dict(info["decision"])
    decision["expert"] = index
    par.decisions.append(decision)
    if protos is not None:
        par.prototypes[name] = protos.to(par.device)
    if expert_protos is not None:
        par.expert_prototypes[name] = expert_protos.to(par.device)
    if par.extractor_name is None and par._extractor is None:
        par.extractor_name = info.get("extractor")
    return name
