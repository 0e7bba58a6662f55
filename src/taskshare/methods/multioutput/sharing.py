"""Which parameters of a multi-output model are shared and which belong to one task.

Hard parameter sharing: a parameter is *shared* when more than one task's loss reaches it, *task-specific*
when exactly one does, and *unused* when none does. Reachability is structural: ``detect_sharing`` walks
the autograd graph of each task's loss on one batch (``gradients.reach_mask``), so no gradient is computed
and the graph is left intact for the training step. A parameter with a numerically zero gradient (a dead
ReLU) still counts as reached.

The official AdaTask code instead splits by name (``pred`` / ``coder_att`` in the name = task-specific);
``shared=`` / ``task_specific=`` override the detection with explicit name lists for such conventions.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from taskshare.errors import ConfigError
from taskshare.methods.multioutput.gradients import reach_mask

__all__ = ["Sharing", "detect_sharing"]


@dataclass(frozen=True)
class Sharing:
    """Parameter names by role; ``reach[name]`` lists the tasks whose loss reaches a shared parameter."""

    tasks: tuple[str, ...]
    shared: tuple[str, ...]
    task_specific: dict[str, tuple[str, ...]]
    unused: tuple[str, ...] = ()
    reach: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def shared_params(self, model: nn.Module) -> list[nn.Parameter]:
        named = dict(model.named_parameters())
        return [named[n] for n in self.shared]

    def task_params(self, model: nn.Module, task: str | None = None) -> list[nn.Parameter]:
        """One task's parameters, or every task-specific parameter (in task order) when ``task`` is None."""
        named = dict(model.named_parameters())
        tasks = self.tasks if task is None else (task,)
        return [named[n] for t in tasks for n in self.task_specific[t]]

    def reach_matrix(self) -> list[list[bool]]:
        """(K, n_shared) booleans: task k reaches shared parameter i (the AdaTask ``reached`` argument)."""
        return [[t in self.reach[n] for n in self.shared] for t in self.tasks]


def detect_sharing(model: nn.Module, losses: Mapping[str, Tensor] | None = None, *,
                   shared: Sequence[str] | None = None,
                   task_specific: Mapping[str, Sequence[str]] | None = None,
                   tasks: Sequence[str] | None = None) -> Sharing:
    """Split ``model``'s trainable parameters by which task losses reach them (one batch's ``losses``).

    Overrides: names in ``shared`` become shared, names in ``task_specific[t]`` become task t's, whatever
    the graph says. Without ``losses`` the two overrides must together name every trainable parameter
    (``tasks`` then gives the task order, default the keys of ``task_specific``).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    known = set(names)
    shared_o = list(shared or ())
    spec_o = {t: list(v) for t, v in (task_specific or {}).items()}
    listed = shared_o + [n for v in spec_o.values() for n in v]
    for n in listed:
        if n not in known:
            raise ConfigError(f"sharing override names unknown parameter {n!r}; "
                              "use names from model.named_parameters()")
    if len(set(listed)) != len(listed):
        dup = next(n for n in listed if listed.count(n) > 1)
        raise ConfigError(f"parameter {dup!r} is listed twice in the sharing override; give it one role")

    if losses is not None:
        order = tuple(losses)
        mask = reach_mask([losses[t] for t in order], [p for _, p in named])
        reach = {n: tuple(t for k, t in enumerate(order) if mask[k, i]) for i, n in enumerate(names)}
    else:
        order = tuple(tasks if tasks is not None else spec_o)
        missing = known - set(listed)
        if missing:
            raise ConfigError(f"without losses the sharing override must name every parameter; "
                              f"{sorted(missing)[0]!r} is unassigned")
        reach = {n: order for n in shared_o}
        reach.update({n: (t,) for t, v in spec_o.items() for n in v})
    for t in spec_o:
        if t not in order:
            raise ConfigError(f"task_specific names unknown task {t!r}; use one of {', '.join(order)}")

    forced = {n: "shared" for n in shared_o} | {n: t for t, v in spec_o.items() for n in v}
    out_shared, out_unused = [], []
    out_spec: dict[str, list[str]] = {t: [] for t in order}
    for n in names:
        role = forced.get(n)
        if role is None:
            r = reach[n]
            role = "unused" if not r else r[0] if len(r) == 1 else "shared"
        if role == "shared":
            out_shared.append(n)
        elif role == "unused":
            out_unused.append(n)
        else:
            out_spec[role].append(n)
    return Sharing(order, tuple(out_shared), {t: tuple(v) for t, v in out_spec.items()}, tuple(out_unused),
                   {n: reach[n] for n in out_shared})
