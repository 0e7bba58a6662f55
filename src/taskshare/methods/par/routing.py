"""PAR's strategy per task: score the experts from relatedness, then reuse, allocate, or allocate with search.

(Wang et al., CVPR 2023; official code WenjinW/PAR@5539e08, ``par_v2.py: strategy``.)

- Expert score S_e = mean over the tasks p on expert e of s(t, p) (``score="max"`` / ``"min"``: the
  official options); e* = argmin_e S_e (the first on ties).
- Task 0 always allocates with search.
- Tiers (thresholds 0.5 / 0.75 in every official run script):

      S_e* <= reuse_threshold                     -> "reuse"            (regularized reuse of e*)
      reuse_threshold < S_e* <= cell_threshold    -> "allocate"         (new expert with e*'s genotype)
      S_e* > cell_threshold                       -> "allocate-search"  (new expert, searched genotype)

- Few-shot override (official code, for CTrL S_long; absent from the paper as far as is known): if the
  new task has N_train <= ``few_shot_max`` samples, reuse the best-scored expert whose largest training
  set is >= ``few_shot_ratio`` · N_train, ignoring the thresholds. ``few_shot_max=0`` (default) disables
  it; the official value is 25 (ratio 10).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from taskshare.errors import ConfigError

ACTIONS = ("reuse", "allocate", "allocate-search")
SCORES = ("mean", "max", "min")


def expert_scores(relatedness: Mapping[str, float], expert_tasks: Sequence[Sequence[str]],
                  reduce: str = "mean") -> list[float]:
    """S_e for every expert from s(t, p) of the tasks p it serves."""
    if reduce not in SCORES:
        raise ConfigError(f"unknown expert score {reduce!r}: choose one of {', '.join(SCORES)}")
    out = []
    for tasks in expert_tasks:
        values = [relatedness[p] for p in tasks]
        out.append(sum(values) / len(values) if reduce == "mean" else max(values) if reduce == "max" else min(values))
    return out


def route(scores: Sequence[float], *, n_train: int, expert_max_train: Sequence[int],
          reuse_threshold: float = 0.5, cell_threshold: float = 0.75, few_shot_max: int = 0,
          few_shot_ratio: float = 10.0) -> tuple[str, int | None]:
    """(action, e*) for a task with expert scores `scores`; no experts yet (task 0) -> allocate-search."""
    if not scores:
        return "allocate-search", None
    best = min(range(len(scores)), key=lambda e: (scores[e], e))
    if n_train <= few_shot_max:
        for e in sorted(range(len(scores)), key=lambda e: (scores[e], e)):
            if expert_max_train[e] >= few_shot_ratio * n_train:
                return "reuse", e
    if scores[best] <= reuse_threshold:
        return "reuse", best
    if scores[best] <= cell_threshold:
        return "allocate", best
    return "allocate-search", best
