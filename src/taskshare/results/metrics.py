"""Continual-learning and multi-task metrics: small pure functions.

The accuracy matrix ``R`` is a T x T list of lists: ``R[i][j]`` is the test
accuracy (a fraction in [0, 1]) on task ``j`` after training task ``i``.
Entries above the diagonal (``j > i``, task not yet seen) may be ``None``;
full matrices (joint training, or evaluating unseen tasks) are accepted too.
Entries on or below the diagonal must be numbers, except that a whole row before the last may be
``None``: a state that was never evaluated (joint training has only the final row). BWT and forgetting
are then undefined (None).

References:
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017 (ACC, BWT, FWT).
    Chaudhry et al., "Riemannian Walk for Incremental Learning", ECCV 2018
    (forgetting).
    Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019,
    and LibMTL (delta_m).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING

from taskshare.errors import TaskshareError

if TYPE_CHECKING:  # accuracy() only calls tensor methods; keep `taskshare report` free of the torch import
    import torch

__all__ = [
    "accuracy",
    "average_accuracy",
    "average_accuracy_curve",
    "backward_transfer",
    "delta_m",
    "forgetting",
    "forward_transfer",
    "validate_matrix",
]

Matrix = Sequence[Sequence[float | None]]

_FIX = "give a T x T list of lists of fractions in [0, 1], None only above the diagonal"


def _is_number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def validate_matrix(R: Matrix) -> list[list[float | None]]:
    """Check that ``R`` is a valid accuracy matrix and return it as lists of floats/None.

    Raises TaskshareError (one line) when ``R`` is empty or not square, when a value is
    not a number in [0, 1], or when a value on/below the diagonal is None.
    """
    try:
        rows = [list(row) for row in R]
    except TypeError:
        raise TaskshareError(f"accuracy matrix is not a list of lists; {_FIX}") from None
    T = len(rows)
    if T == 0:
        raise TaskshareError(f"accuracy matrix is empty; {_FIX}")
    out: list[list[float | None]] = []
    for i, row in enumerate(rows):
        if len(row) != T:
            raise TaskshareError(
                f"accuracy matrix is not square: row {i} has {len(row)} entries, expected {T}; {_FIX}"
            )
        clean: list[float | None] = []
        skipped = i < T - 1 and all(v is None for v in row)  # a state never evaluated (offline learners)
        for j, v in enumerate(row):
            if v is None:
                if j <= i and not skipped:
                    raise TaskshareError(
                        f"accuracy matrix has None at [{i}][{j}] on/below the diagonal "
                        f"(task {j} was trained by step {i}); evaluate it there or {_FIX}"
                    )
                clean.append(None)
                continue
            if not _is_number(v) or math.isnan(float(v)) or not 0.0 <= float(v) <= 1.0:
                raise TaskshareError(
                    f"accuracy matrix value {v!r} at [{i}][{j}] is not a fraction in [0, 1]; "
                    "store accuracies as fractions (0.81, not 81)"
                )
            clean.append(float(v))
        out.append(clean)
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def average_accuracy(R: Matrix) -> float:
    """Final average accuracy ACC = 1/T * sum_j R[T-1][j] (Lopez-Paz & Ranzato 2017)."""
    R = validate_matrix(R)
    return _mean(R[-1])  # the final row has no None after validation


def backward_transfer(R: Matrix) -> float | None:
    """Backward transfer BWT = 1/(T-1) * sum_{j<T-1} (R[T-1][j] - R[j][j]).

    Negative values mean forgetting (Lopez-Paz & Ranzato 2017). None when T == 1.
    """
    R = validate_matrix(R)
    T = len(R)
    if T == 1 or any(R[j][j] is None for j in range(T)):
        return None
    return _mean([R[T - 1][j] - R[j][j] for j in range(T - 1)])


def forward_transfer(R: Matrix, baseline: Sequence[float | None] | None) -> float | None:
    """Forward transfer FWT = 1/(T-1) * sum_{j>=1} (R[j-1][j] - b_j) (Lopez-Paz & Ranzato 2017).

    ``baseline[j]`` (length T; ``b_0`` is unused) is the accuracy of a randomly
    initialised model on task j. Returns None where FWT is not defined: T == 1,
    ``baseline`` is None or has a None for j >= 1, or some ``R[j-1][j]`` is None
    (unseen tasks were not evaluated).
    """
    R = validate_matrix(R)
    T = len(R)
    if T == 1 or baseline is None:
        return None
    b = list(baseline)
    if len(b) != T:
        raise TaskshareError(
            f"forward-transfer baseline has {len(b)} entries but the accuracy matrix has {T} tasks; "
            "give one random-init accuracy per task"
        )
    terms = []
    for j in range(1, T):
        if R[j - 1][j] is None or b[j] is None:
            return None
        if not _is_number(b[j]) or not 0.0 <= float(b[j]) <= 1.0:
            raise TaskshareError(
                f"forward-transfer baseline value {b[j]!r} for task {j} is not a fraction in [0, 1]; "
                "store accuracies as fractions"
            )
        terms.append(R[j - 1][j] - float(b[j]))
    return _mean(terms)


def forgetting(R: Matrix) -> float | None:
    """Average forgetting F = 1/(T-1) * sum_{j<T-1} max_{l in [j, T-2]} (R[l][j] - R[T-1][j]).

    Chaudhry et al. 2018. Positive values mean the final model lost accuracy
    relative to the best accuracy seen earlier. None when T == 1.
    """
    R = validate_matrix(R)
    T = len(R)
    if T == 1 or any(R[j][j] is None for j in range(T)):
        return None
    return _mean([max(R[l][j] for l in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)])


def average_accuracy_curve(R: Matrix) -> list[float | None]:
    """Average accuracy along the stream: element i is 1/(i+1) * sum_{j<=i} R[i][j] (None: not evaluated)."""
    R = validate_matrix(R)
    return [None if R[i][i] is None else _mean(R[i][: i + 1]) for i in range(len(R))]


def _lookup(d: Mapping, key: str, where: str, fix: str):
    if not isinstance(d, Mapping):
        raise TaskshareError(f"{where} is not a dict; {fix}")
    if key not in d:
        raise TaskshareError(f"missing key {key!r} in {where}; {fix}")
    return d[key]


def delta_m(
    task_metrics: Mapping[str, Mapping[str, float]],
    baseline_metrics: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
) -> float:
    """Multi-task performance drop Δm in percent (Maninis et al. 2019; LibMTL convention).

    Δm = 100/K * sum_k 1/N_k * sum_i (-1)^{l_i} (M_{k,i} - B_{k,i}) / B_{k,i}

    over the K tasks and N_k metrics of task k in ``task_metrics``, where B is the
    single-task baseline and l_i = 1 when lower is better. Positive Δm means the
    multi-task model beats the baselines. All three dicts are {task: {metric: ...}};
    every task/metric of ``task_metrics`` must appear in the other two and vice versa.
    """
    fix = "give the same tasks and metrics in task_metrics, baseline_metrics and higher_is_better"
    if not isinstance(task_metrics, Mapping) or not task_metrics:
        raise TaskshareError(f"task_metrics is empty or not a dict; {fix}")
    for name, other in (("baseline_metrics", baseline_metrics), ("higher_is_better", higher_is_better)):
        if not isinstance(other, Mapping):
            raise TaskshareError(f"{name} is not a dict; {fix}")
        for task in other:
            if task not in task_metrics:
                raise TaskshareError(f"missing key {task!r} in task_metrics (present in {name}); {fix}")
    per_task = []
    for task, metrics in task_metrics.items():
        base = _lookup(baseline_metrics, task, "baseline_metrics", fix)
        hib = _lookup(higher_is_better, task, "higher_is_better", fix)
        if not isinstance(metrics, Mapping) or not metrics:
            raise TaskshareError(f"task_metrics[{task!r}] is empty or not a dict; {fix}")
        for name, other in (("baseline_metrics", base), ("higher_is_better", hib)):
            if isinstance(other, Mapping):
                for m in other:
                    if m not in metrics:
                        raise TaskshareError(
                            f"missing key {task}.{m!r} in task_metrics (present in {name}); {fix}"
                        )
        terms = []
        for m, value in metrics.items():
            b = _lookup(base, m, f"baseline_metrics[{task!r}]", fix)
            up = _lookup(hib, m, f"higher_is_better[{task!r}]", fix)
            if not _is_number(value) or not _is_number(b):
                raise TaskshareError(f"metric {task}.{m} is not a number; report numeric metric values")
            if b == 0:
                raise TaskshareError(
                    f"baseline for {task}.{m} is 0, so the relative change is undefined; "
                    "use a nonzero baseline or drop that metric"
                )
            sign = 1.0 if up else -1.0
            terms.append(sign * (float(value) - float(b)) / float(b))
        per_task.append(_mean(terms))
    return 100.0 * _mean(per_task)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows where ``argmax(logits, -1) == targets``; logits (N, C), targets (N,)."""
    if logits.dim() < 1 or logits.shape[:-1] != targets.shape:
        raise TaskshareError(
            f"accuracy: logits shape {tuple(logits.shape)} does not match targets shape "
            f"{tuple(targets.shape)}; pass logits (N, C) and integer class targets (N,)"
        )
    if targets.numel() == 0:
        raise TaskshareError("accuracy: no samples (empty targets); evaluate on a non-empty batch")
    pred = logits.argmax(dim=-1)
    return (pred == targets.to(pred.device)).float().mean().item()
