"""Mean ± std over seeds: one row per (benchmark, method) of the numeric metrics of several results.json."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["mean_std", "summarize"]

# the scalar metrics a results.json may hold (lifelong and multi-output), in the order they are reported
METRICS = ("avg_acc", "bwt", "fwt", "forgetting", "val_avg", "delta_m", "time_s", "peak_rss_mb")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(results: Sequence[dict]) -> dict[str, Any]:
    """{"groups": [{benchmark, method, seeds, <metric>: {mean, std, n}}], ...} in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((str(r.get("benchmark")), str(r.get("method"))), []).append(r)
    rows = []
    for (bench, method), rs in groups.items():
        row: dict[str, Any] = {"benchmark": bench, "method": method, "seeds": [r.get("seed") for r in rs]}
        for key in METRICS:
            vals = [r[key] for r in rs if _number(r.get(key))]
            if vals:
                m, s = mean_std(vals)
                row[key] = {"mean": m, "std": s, "n": len(vals)}
        rows.append(row)
    return {"schema": "taskshare-summary/1", "groups": rows}
