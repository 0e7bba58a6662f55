"""Metrics (accuracy matrix, transfer, forgetting, delta_m) and reporting (table, plots)."""

from taskshare.results.metrics import (
    accuracy,
    average_accuracy,
    average_accuracy_curve,
    backward_transfer,
    delta_m,
    forgetting,
    forward_transfer,
    validate_matrix,
)
from taskshare.results.report import comparison_table, find_results, plot_results, report

__all__ = [
    "accuracy",
    "average_accuracy",
    "average_accuracy_curve",
    "backward_transfer",
    "comparison_table",
    "delta_m",
    "find_results",
    "forgetting",
    "forward_transfer",
    "plot_results",
    "report",
    "validate_matrix",
]
