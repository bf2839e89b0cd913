"""Reading one score out of lm-eval's results JSON: the one place that knows its layout.

lm-eval writes each task's (and group's) metrics as "<metric>,<filter>" keys under "results", the
standard error as "<metric>_stderr,<filter>" (or "N/A"), and the items each task scored under
"n-samples"[task]["effective"]; a group's items are its tasks' ("group_subtasks").
"""

from __future__ import annotations

import math
from typing import Any

from modarb_tasks.catalog import Metric


def number(value: Any) -> float | None:
    """A finite float, or None for lm-eval's "N/A" stderr, NaN and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def task_score(results: dict, task: str, metric: str, filter_name: str = "none") -> Metric | None:
    """`task`'s `metric` under `filter_name` in lm-eval's `results` dict, with its stderr and item count
    (a group: summed over its tasks); None when the task or a finite value of the metric is missing."""
    value = number((results.get("results", {}).get(task) or {}).get(f"{metric},{filter_name}"))
    if value is None:
        return None
    stderr = number(results["results"][task].get(f"{metric}_stderr,{filter_name}"))
    tasks = (results.get("group_subtasks") or {}).get(task) or [task]
    n = sum((results.get("n-samples") or {}).get(name, {}).get("effective", 0) for name in tasks)
    return Metric(value, stderr, n)
