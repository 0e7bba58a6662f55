"""summary.json of a multi-seed run: per group of runs (`groups.group_results`: one method on one benchmark with
one configuration, one run per seed) the mean and sample std (n - 1) of every scalar metric."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskshare.results.groups import group_results

__all__ = ["METRICS", "summarize"]

# the scalar metrics a results.json may hold (lifelong and multi-output), in the order they are reported
METRICS = ("avg_acc", "bwt", "fwt", "forgetting", "val_avg", "delta_m", "time_s", "peak_rss_mb")


def summarize(results: Sequence[dict]) -> dict[str, Any]:
    """{"schema", "groups": [{benchmark, method, label, seeds, <metric>: {mean, std, n}}]} (std null for n = 1)."""
    rows = []
    for g in group_results(results):
        row: dict[str, Any] = {"benchmark": g.benchmark, "method": g.method, "label": g.label, "seeds": g.seeds}
        for key in METRICS:
            s = g.key(key)
            if s.n:
                row[key] = {"mean": s.mean, "std": s.std, "n": s.n}
        rows.append(row)
    return {"schema": "taskshare-summary/1", "groups": rows}
