"""Regression check: do new results fall below a baseline on modality following or the controls?

Headline metric per task: mf_ratio for the follow tasks, acc for the controls; any other lm-eval task
the baseline scored (an extra control: MMMU, ARC, the user's own) by its own primary metric, in that
metric's direction (an error rate regresses when it rises). A task regresses
when its drop is larger than the tolerance beyond what chance explains:

- paired, when both sides kept per-item outcomes (lm-eval's --log_samples) on the same docs: the
  upper end of the paired interval for new − baseline (Newcombe's, modarb_tasks/paired.py) lies
  below −tolerance. The table shows the discordant counts b (lost) and c (gained) and McNemar's p.
- unpaired otherwise: new < baseline − tolerance − z·sqrt(se_baseline² + se_new²) (a missing or
  NaN stderr is unknown: shown as ?, counted as 0).

Each row also gives the minimum drop the rule catches with 80% power at the run's item count.
Runs on different item counts or doc sets are not compared (exit 2): a --limit 8 run is no
baseline for a 200-item one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modarb_tasks.catalog import SLOTS, Metric, catalog
from modarb_tasks.errors import ModarbError
from modarb_tasks.paired import Paired, min_detectable_drop, pair
from leaderboard.entries import headline, load_scores

DEFAULT_TOLERANCE = 0.02
DEFAULT_Z = 1.96


@dataclass(frozen=True)
class Comparison:
    task: str
    metric: str
    baseline: Metric
    new: Metric
    tolerance: float
    z: float
    paired: Paired | None  # None: the unpaired rule; items counted in the metric's good direction
    higher_is_better: bool = True  # an extra control's metric may be an error rate

    @property
    def sign(self) -> int:
        """+1 where higher is better, −1 where lower is: the rules below work on sign · value."""
        return 1 if self.higher_is_better else -1

    @property
    def floor(self) -> float:
        """The unpaired rule's worst new value that is not a regression (a ceiling where lower is better)."""
        return self.sign * regression_floor(_oriented(self.baseline, self.sign), _oriented(self.new, self.sign),
                                            self.tolerance, self.z)

    @property
    def gain_interval(self) -> tuple[float, float] | None:
        """The paired interval of the change in the metric's good direction."""
        return None if self.paired is None else self.paired.interval(self.z)

    @property
    def interval(self) -> tuple[float, float] | None:
        """The paired interval of new − baseline."""
        gain = self.gain_interval
        return None if gain is None else (gain if self.sign > 0 else (-gain[1], -gain[0]))

    @property
    def regressed(self) -> bool:
        # written so that a NaN anywhere reads as a regression, never as passed
        if self.paired is not None:
            return not self.gain_interval[1] >= -self.tolerance
        return not self.sign * self.new.value >= self.sign * self.floor

    @property
    def min_drop(self) -> float:
        """The smallest true drop this row's rule catches with 80% power."""
        if self.paired is not None:
            spread = self.paired.spread
        else:
            spread = math.sqrt(sum(_variance(m) for m in (self.baseline, self.new)))
        return min_detectable_drop(self.new.n, spread, self.tolerance, self.z)


def _oriented(metric: Metric, sign: int) -> Metric:
    return Metric(sign * metric.value, metric.stderr, metric.n)


def _variance(metric: Metric) -> float:
    """Per-item variance: a share's p(1 − p); another metric's from its stderr (0 when unknown)."""
    if 0.0 <= metric.value <= 1.0:
        return metric.value * (1 - metric.value)
    return (metric.stderr or 0.0) ** 2 * metric.n


def regression_floor(baseline: Metric, new: Metric, tolerance: float, z: float) -> float:
    """The lowest new value that is not a regression under the unpaired rule."""
    return baseline.value - tolerance - z * math.hypot(baseline.stderr or 0.0, new.stderr or 0.0)


def check_setting(name: str, value: float) -> float:
    """`value` when it is a finite number ≥ 0 (a NaN or infinite tolerance or z would pass anything)."""
    if not (math.isfinite(value) and value >= 0):
        raise ModarbError(f"--{name} {value} must be a finite number ≥ 0 (a NaN or infinite {name} lets any drop pass)")
    return value


def _task_order(task: str) -> tuple[str, int]:
    found = catalog().tasks[task]
    return found.suite, SLOTS.index(found.slot)


def _paired(task: str, baseline: dict[str, Any], new: dict[str, Any], higher_is_better: bool = True) -> Paired | None:
    """The two runs' per-item outcomes paired (1: the good outcome), or None when one side kept none."""
    before, after = baseline.get("items"), new.get("items")
    if before is None or after is None:
        return None
    if before["doc_ids_sha256"] != after["doc_ids_sha256"]:
        raise ModarbError(f"task {task}: the baseline and the new results scored different docs; "
                          "compare runs on the same items (the same --limit, --samples and --metadata)")
    good = (lambda x: int(x)) if higher_is_better else (lambda x: 1 - int(x))
    return pair([good(x) for x in before["outcomes"]], [good(x) for x in after["outcomes"]])


def compare(baseline_path: Path, results_path: Path, tolerance: float = DEFAULT_TOLERANCE,
            z: float = DEFAULT_Z) -> list[Comparison]:
    """Compare every modarb task of the baseline with the same task in the new results."""
    for name, value in (("tolerance", tolerance), ("z", z)):
        check_setting(name, value)
    (baseline, base_controls), (new, new_controls) = load_scores(baseline_path), load_scores(results_path)
    missing = sorted(set(baseline) - set(new)) + sorted(set(base_controls) - set(new_controls))
    if missing:
        raise ModarbError(f"{results_path}: lacks tasks the baseline has ({', '.join(missing)}); "
                          "evaluate the new model on the same --tasks")
    comparisons = []
    for task in sorted(baseline, key=_task_order):
        metric = catalog().tasks[task].headline
        base_metric, new_metric = headline(task, baseline[task]), headline(task, new[task])
        if base_metric is None or new_metric is None:
            raise ModarbError(f"task {task}: no {metric!r} metric in the baseline or the new results")
        if base_metric.n != new_metric.n:
            raise ModarbError(f"task {task}: the baseline scored {base_metric.n} items, the new results {new_metric.n}; "
                              "compare runs on the same items (the same --limit and --metadata)")
        comparisons.append(Comparison(task, metric, base_metric, new_metric, tolerance, z,
                                      _paired(task, baseline[task], new[task])))
    return comparisons + [_compare_control(task, base_controls[task], new_controls[task], tolerance, z)
                          for task in sorted(base_controls)]


def _compare_control(task: str, baseline: dict[str, Any], new: dict[str, Any], tolerance: float,
                     z: float) -> Comparison:
    """An extra lm-eval control of the baseline against the same task in the new results, by the
    baseline's primary metric and its direction."""
    if (new["metric"], new["higher_is_better"]) != (baseline["metric"], baseline["higher_is_better"]):
        raise ModarbError(f"task {task}: the baseline is scored by {baseline['metric']!r}, the new results by "
                          f"{new['metric']!r}; compare runs of the same task version")
    if baseline["n"] != new["n"]:
        raise ModarbError(f"task {task}: the baseline scored {baseline['n']} items, the new results {new['n']}; "
                          "compare runs on the same items (the same --limit)")
    base_metric, new_metric = (Metric(r["value"], r["stderr"], r["n"]) for r in (baseline, new))
    return Comparison(task, baseline["metric"] + ("" if baseline["higher_is_better"] else " (lower is better)"),
                      base_metric, new_metric, tolerance, z,
                      _paired(task, baseline, new, baseline["higher_is_better"]), baseline["higher_is_better"])


def _metric_text(metric: Metric) -> str:
    """The value ± its stderr; "± ?" when the file gives none (or NaN): the floor then counts it as 0."""
    return f"{metric.value:.3f} ± " + ("?" if metric.stderr is None else f"{metric.stderr:.3f}")


def _row(c: Comparison) -> tuple[str, ...]:
    common = (c.task, c.metric, _metric_text(c.baseline), _metric_text(c.new), f"{c.new.value - c.baseline.value:+.3f}")
    if c.paired is not None:
        low, high = c.interval
        tested = ("paired", f"[{low:+.3f}, {high:+.3f}]", str(c.paired.b), str(c.paired.c), f"{c.paired.p_value:.3g}")
    else:
        tested = ("unpaired", f"{'floor' if c.higher_is_better else 'ceiling'} {c.floor:.3f}", "–", "–", "–")
    return (*common, *tested, f"{c.min_drop:.3f}", "REGRESSION" if c.regressed else "ok")


def format_report(comparisons: list[Comparison], tolerance: float, z: float) -> str:
    """A short fixed-width diff table, which test each row used, and a one-line verdict."""
    header = ("task", "metric", "baseline", "new", "delta", "test", "interval / floor", "b", "c", "p",
              "min drop (80%)", "status")
    lines = [header] + [_row(c) for c in comparisons]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    paired = sum(c.paired is not None for c in comparisons)
    why = "; pairing needs both runs' per-item outcomes (lm_eval --log_samples)"
    tests = (f"paired on all {paired} tasks" if paired == len(comparisons) else
             f"unpaired on all {len(comparisons)} tasks{why}" if not paired else
             f"paired on {paired} of {len(comparisons)} tasks, unpaired on the rest{why}")
    notes = [f"test: {tests}",
             "b: items lost, c: items gained, p: exact McNemar; interval: new − baseline at the level z sets; "
             "min drop: the true drop the rule catches with 80% power at this item count"]
    regressed = [c.task for c in comparisons if c.regressed]
    settings = f"tolerance {tolerance:g}, z {z:g}"
    if any(m.stderr is None for c in comparisons for m in (c.baseline, c.new)):
        settings += "; a stderr shown as ? is unknown and counted as 0"
    verdict = (f"REGRESSION on {len(regressed)} of {len(comparisons)} tasks ({settings}): {', '.join(regressed)}"
               if regressed else f"no regression on {len(comparisons)} tasks ({settings})")
    return "\n".join(table + [""] + notes + [verdict])
