"""TAPS task artifacts: only the active layers' deltas (exact export and import), and the merged model."""
from __future__ import annotations

from pathlib import Path
from typing import Any


from taskshare.core import load_task, save_task
from taskshare.core.artifacts import read_artifact
from taskshare.errors import ArtifactError
from taskshare.methods.blocks.gating import active_layers, gated_layers, merged_model, scores, task_tensors

__all__ = ["export_task", "import_task", "merged_model"]  # merged_model: methods.blocks.gating


def export_task(source, task: str, path: str | Path, *, meta: dict[str, Any] | None = None) -> int:
    """Write `task` as a per-task artifact with only the active layers' deltas; returns bytes written.

    The artifact holds every score, the active deltas, all norm tensors and the head; the metadata lists the
    gated and active layers, the scores and τ. Load it with `import_task` onto a wrapped base.
    """
    tt = task_tensors(source)
    layers = gated_layers(tt.model)
    active = set(active_layers(tt, task))
    omit = [f"{n}.{leaf}" for n, m in layers.items() if n not in active
            for leaf in ("delta", "delta_bias") if getattr(m, leaf) is not None]
    taus = {m.taps_tau for m in layers.values()}
    info = {"tau": taus.pop() if len(taus) == 1 else {n: m.taps_tau for n, m in layers.items()},
            "layers": list(layers), "active_layers": [n for n in layers if n in active],
            "scores": scores(tt, task)}
    return save_task(tt, task, path, omit=omit, meta={**(meta or {}), "taps": info})


def import_task(target, path: str | Path, task: str | None = None, *, replace: bool = False) -> str:
    """Load a `export_task` artifact onto a wrapped base (`target`: learner or TaskTensors); returns the task name.

    Besides `load_task`'s checks (same base fingerprint and slots), refuses an artifact whose gated layers or
    τ differ from the model's, or whose scores contradict its list of active layers.
    """
    tt = task_tensors(target)
    info = read_artifact(path)[0]["meta"].get("taps")  # the two files agree (checksums) before meta is read
    if not isinstance(info, dict):
        raise ArtifactError(f"{path} is not a TAPS export: write it with taskshare.methods.taps.export_task")
    layers = gated_layers(tt.model)
    if list(layers) != info["layers"]:
        raise ArtifactError(f"{path} was exported from a model with other gated layers: wrap the base with the "
                            "same layer_types as when it was trained")
    taus = info["tau"] if isinstance(info["tau"], dict) else dict.fromkeys(layers, info["tau"])
    if any(m.taps_tau != taus[n] for n, m in layers.items()):
        raise ArtifactError(f"{path} was trained with tau {info['tau']}, this model gates at another tau: "
                            "wrap the base with the same tau")
    name = load_task(tt, path, task, replace=replace)
    if active_layers(tt, name) != info["active_layers"]:
        tt.remove_task(name)
        raise ArtifactError(f"{path} is corrupted: its scores do not match its list of active layers; re-export it")
    return name
