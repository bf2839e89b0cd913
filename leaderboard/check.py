"""Regression check: do new results fall below a baseline on modality following or the controls?

A task regresses when  new < baseline − tolerance − z·sqrt(se_baseline² + se_new²):
the tolerance is the drop you accept, the z term the drop sampling noise alone can explain
(a missing or NaN stderr is unknown: shown as ?, counted as 0). Headline metric per task: mf_ratio for the follow tasks,
acc for the controls. Runs on different item counts are not compared (exit 2): a --limit 8 run
is no baseline for a 200-item one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from modarb_tasks.catalog import SLOTS, Metric, catalog
from modarb_tasks.errors import ModarbError
from leaderboard.entries import headline, load_scores

DEFAULT_TOLERANCE = 0.02
DEFAULT_Z = 1.96


@dataclass(frozen=True)
class Comparison:
    task: str
    metric: str
    baseline: Metric
    new: Metric
    floor: float

    @property
    def regressed(self) -> bool:
        return not self.new.value >= self.floor  # a NaN anywhere never reads as "ok"


def regression_floor(baseline: Metric, new: Metric, tolerance: float, z: float) -> float:
    """The lowest new value that is not a regression."""
    return baseline.value - tolerance - z * math.hypot(baseline.stderr or 0.0, new.stderr or 0.0)


def check_setting(name: str, value: float) -> float:
    """`value` when it is a finite number ≥ 0 (a NaN or infinite tolerance or z would pass anything)."""
    if not (math.isfinite(value) and value >= 0):
        raise ModarbError(f"--{name} {value} must be a finite number ≥ 0 (a NaN or infinite {name} lets any drop pass)")
    return value


def _task_order(task: str) -> tuple[str, int]:
    found = catalog().tasks[task]
    return found.suite, SLOTS.index(found.slot)


def compare(baseline_path: Path, results_path: Path, tolerance: float = DEFAULT_TOLERANCE,
            z: float = DEFAULT_Z) -> list[Comparison]:
    """Compare every modarb task of the baseline with the same task in the new results."""
    for name, value in (("tolerance", tolerance), ("z", z)):
        check_setting(name, value)
    baseline, new = load_scores(baseline_path), load_scores(results_path)
    missing = sorted(set(baseline) - set(new))
    if missing:
        raise ModarbError(f"{results_path}: lacks tasks the baseline has ({', '.join(missing)}); "
                          "evaluate the new model on the same --tasks")
    comparisons = []
    for task in sorted(baseline, key=_task_order):
        base_metric, new_metric = headline(task, baseline[task]), headline(task, new[task])
        metric = catalog().tasks[task].headline
        if base_metric is None or new_metric is None:
            raise ModarbError(f"task {task}: no {metric!r} metric in the baseline or the new results")
        if base_metric.n != new_metric.n:
            raise ModarbError(f"task {task}: the baseline scored {base_metric.n} items, the new results {new_metric.n}; "
                              "compare runs on the same items (the same --limit and --metadata)")
        comparisons.append(Comparison(task, metric, base_metric, new_metric,
                                      regression_floor(base_metric, new_metric, tolerance, z)))
    return comparisons


def _metric_text(metric: Metric) -> str:
    """The value ± its stderr; "± ?" when the file gives none (or NaN): the floor then counts it as 0."""
    return f"{metric.value:.3f} ± " + ("?" if metric.stderr is None else f"{metric.stderr:.3f}")


def format_report(comparisons: list[Comparison], tolerance: float, z: float) -> str:
    """A short fixed-width diff table and a one-line verdict."""
    header = ("task", "metric", "baseline", "new", "delta", "floor", "status")
    lines = [header] + [
        (c.task, c.metric, _metric_text(c.baseline), _metric_text(c.new), f"{c.new.value - c.baseline.value:+.3f}",
         f"{c.floor:.3f}", "REGRESSION" if c.regressed else "ok")
        for c in comparisons]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    regressed = [c.task for c in comparisons if c.regressed]
    settings = f"tolerance {tolerance:g}, z {z:g}"
    if any(m.stderr is None for c in comparisons for m in (c.baseline, c.new)):
        settings += "; a stderr shown as ? is unknown and counted as 0"
    verdict = (f"REGRESSION on {len(regressed)} of {len(comparisons)} tasks ({settings}): {', '.join(regressed)}"
               if regressed else f"no regression on {len(comparisons)} tasks ({settings})")
    return "\n".join(table + ["", verdict])
