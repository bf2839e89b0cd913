"""Preserved ability on any lm-eval task: the user's own benchmarks as an intervention's controls.

modarb's two control tasks measure ability on its own items; a user blocking heads in a real VLM
wants MMMU, ChartQA, ARC or an in-house task too. `reproduce --controls` scores the baseline and
every intervention it reports on such tasks, through the same `hf-modarb` model (spec applied as for
modarb's tasks), each by the task's own primary metric as lm-eval defines it: the first of its
`metric_list` (a group: its first aggregate metric) and that metric's `higher_is_better`, so a task
where lower is better (an error rate) is compared the right way round.

Bad input (an unknown name, data not in the local cache, no numeric metric) is refused while the
tasks are resolved, before any model loads.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modarb_tasks import TASKS_PATH
from modarb_tasks.errors import ModarbError
from modarb_tasks.paired import DEFAULT_Z, pair
from modarb_tasks.results import task_score

NO_SCORE = ("bypass",)  # lm-eval's predict-only metric: it aggregates to a placeholder, not a score


@dataclass(frozen=True)
class Control:
    """One control as the report shows it: a task (or a group's aggregate) and its primary metric."""

    name: str
    metric: str
    filter: str  # the results key's filter part ("none" unless the task's filter_list names one)
    higher_is_better: bool
    leaves: tuple[str, ...]  # the tasks whose logged samples pool into its per-item outcomes

    def describe(self) -> dict:
        return {"task": self.name, "metric": self.metric, "filter": self.filter,
                "higher_is_better": self.higher_is_better, "tasks": list(self.leaves)}


@dataclass
class ControlSet:
    """The resolved controls, the TaskManager that knows them, and how many docs each run scores."""

    controls: tuple[Control, ...]
    names: tuple[str, ...]  # as given to --controls: what lm-eval is asked to run
    include_path: Path | None
    limit: int | None
    task_manager: Any


def parse_names(text: str) -> tuple[str, ...]:
    """`--controls` text -> task names, in order, without repeats."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ModarbError(f"--controls {text!r} names no task; give lm-eval task or group names, comma-separated "
                          "(e.g. arc_easy,mmmu_val)")
    return names


def resolve(names: Sequence[str], include_path: Path | None, limit: int | None,
            metadata: dict | None = None) -> ControlSet:
    """Find each name among lm-eval's tasks (and `include_path`'s), build it (its data must load
    offline) and read its primary metric; a ModarbError names the first that fails."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not include_path.is_dir():
        raise ModarbError(f"--include_path {include_path} is not a folder; give the folder of your task YAMLs")
    paths = [TASKS_PATH, *([str(include_path)] if include_path is not None else [])]
    manager = TaskManager(include_path=paths, metadata=metadata or None)
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
            hint = f"closest lm-eval knows: {', '.join(close)}" if close else "lm-eval knows no similar name"
            raise ModarbError(f"--controls: unknown task {name!r} ({hint}); list them with `modarb eval ls tasks`, "
                              "or add your own YAMLs with --include_path DIR")
    controls = [control for name in names for control in _controls_of(manager, name)]
    leaves = [leaf for control in controls for leaf in control.leaves]
    twice = sorted({leaf for leaf in leaves if leaves.count(leaf) > 1})
    if twice:  # lm-eval refuses a task requested twice, but only once the model is loaded
        raise ModarbError(f"--controls: task {twice[0]!r} is named twice (alone and in a group, or in two groups); "
                          "name it once")
    return ControlSet(tuple(controls), tuple(names), include_path, limit, manager)


def _controls_of(manager, name: str) -> list[Control]:
    """A task: itself. A group with an aggregate metric: that aggregate. A tag or a group without
    one: each of its tasks, since lm-eval reports no number for the whole."""
    from lm_eval.api.group import Group

    try:
        built = manager.load([name])
    except OSError as error:  # datasets' offline refusal is a ConnectionError, a missing file FileNotFoundError
        raise ModarbError(f"--controls: task {name!r} cannot load its data offline ({str(error).splitlines()[0]}); "
                          "its dataset must be in the local HF cache: run it once online, e.g. "
                          f"`modarb eval --tasks {name} --limit 1`") from None
    tasks = built["tasks"]
    group = built["groups"].get(name)
    if isinstance(group, Group) and group.has_aggregation:
        aggregate = group.aggregate_metric_list[0]
        filters = aggregate.filter_list or ["none"]
        leaves = tuple(task.task_name for task in group.get_all_tasks())
        return [Control(name, aggregate.metric, filters[0],
                        _higher_is_better(name, tasks[leaves[0]], aggregate.metric), leaves)]
    return [_task_control(task_name, task) for task_name, task in tasks.items()]


def _task_control(name: str, task) -> Control:
    metrics = task.higher_is_better()
    metric = next(iter(metrics), None)
    if metric is None or metric in NO_SCORE:
        raise ModarbError(f"--controls: task {name!r} has no numeric metric (its metric_list gives "
                          f"{metric or 'none'}); choose a task that scores its answers")
    return Control(name, metric, task._filters[0].name, _higher_is_better(name, task, metric), (name,))


def _higher_is_better(name: str, task, metric: str) -> bool:
    found = task.higher_is_better().get(metric)
    if found is None:
        raise ModarbError(f"--controls: task {name!r} does not say whether a higher {metric!r} is better; "
                          "set higher_is_better in its metric_list")
    return bool(found)


# ---------------------------------------------------------------- reading a run's scores


@dataclass(frozen=True)
class Score:
    """A control's number in one run, with its stderr (None: lm-eval gave N/A) and per-item values."""

    value: float
    stderr: float | None
    n: int
    items: dict[tuple[str, int], float]  # (task, doc_id) -> the metric's per-item value, when logged

    @property
    def binary_mean(self) -> bool:
        """Whether the items are 0/1 and average to the value: then two runs pair item by item."""
        values = list(self.items.values())
        return bool(values) and all(v in (0, 1) for v in values) and math.isclose(
            sum(values) / len(values), self.value, abs_tol=1e-9)


def read_score(results_file: Path, control: Control) -> Score:
    """`control`'s score in the results file an Evaluator run wrote (and the samples files beside it)."""
    results = json.loads(results_file.read_text(encoding="utf-8"))
    score = task_score(results, control.name, control.metric, control.filter)
    if score is None:
        value = results["results"][control.name].get(f"{control.metric},{control.filter}")
        raise ModarbError(f"--controls: task {control.name!r} gave {control.metric} = {value!r}, not a number; "
                          "choose a task that scores its answers")
    stamp = results_file.stem.removeprefix("results_")
    items = {}
    for task in control.leaves:
        samples = results_file.with_name(f"samples_{task}_{stamp}.jsonl")
        for line in samples.read_text(encoding="utf-8").splitlines() if samples.is_file() else ():
            sample = json.loads(line)
            if sample.get("filter") == control.filter and isinstance(sample.get(control.metric), (int, float)):
                items[(task, sample["doc_id"])] = float(sample[control.metric])
    n = sum(results["n-samples"][task]["effective"] for task in control.leaves)  # nested groups: every leaf
    return Score(score.value, score.stderr, n, items)


def compare(baseline: Score, run: Score, higher_is_better: bool, z: float = DEFAULT_Z) -> dict:
    """run − baseline with its 95% interval: paired (Newcombe's, with b lost / c gained and McNemar's p)
    when both runs logged 0/1 items on the same docs, else from the two stderrs (None when one is
    unknown). `change` is the verdict in the metric's own direction: "worse" or "better" when the
    interval excludes 0, else "within noise"."""
    delta = run.value - baseline.value
    found: dict[str, Any] = {"delta": delta}
    if baseline.binary_mean and run.binary_mean and baseline.items.keys() == run.items.keys():
        docs = sorted(baseline.items)
        paired = pair([int(baseline.items[d]) for d in docs], [int(run.items[d]) for d in docs])
        low, high = paired.interval(z)
        found |= {"test": "paired", "low": low, "high": high, "b": paired.b, "c": paired.c, "p": paired.p_value}
    elif baseline.stderr is not None and run.stderr is not None:
        half = z * math.hypot(baseline.stderr, run.stderr)
        found |= {"test": "unpaired", "low": delta - half, "high": delta + half}
    else:
        found |= {"test": None, "low": None, "high": None}
    gained = (found["low"], found["high"]) if higher_is_better else (
        None if found["high"] is None else -found["high"], None if found["low"] is None else -found["low"])
    found["change"] = ("within noise" if gained[0] is None or gained[0] <= 0 <= gained[1]
                       else "better" if gained[0] > 0 else "worse")
    return found


def preserved_ability(control_set: ControlSet, runs: Sequence[tuple[str, Any]]) -> dict:
    """summary.json's "preserved_ability": each control's metric and direction, and each run's scores
    (the first run is the baseline; every other one carries its comparison with it)."""
    (_, baseline), *others = runs
    base = {c.name: read_score(baseline.results_file, c) for c in control_set.controls}
    rows = []
    for label, run in runs:
        scores = {}
        for control in control_set.controls:
            score = base[control.name] if run is baseline else read_score(run.results_file, control)
            scores[control.name] = {"value": score.value, "stderr": score.stderr, "n": score.n}
            if run is not baseline:
                scores[control.name]["vs_baseline"] = compare(base[control.name], score, control.higher_is_better)
        rows.append({"run": label, "command": run.command, "scores": scores})
    return {"limit": control_set.limit, "tasks": [c.describe() for c in control_set.controls], "runs": rows}


# ---------------------------------------------------------------- scoring reproduce's runs


def reported_runs(baseline, chosen: tuple[str, Any], by_ranking: dict, amplified, sweep, curve=()) -> list[tuple[str, Any]]:
    """(label, run) of every run reproduce reports, baseline first: each ranking's top set blocked
    (`chosen`: the headline ranking's), the learned gates, each α of the sweep, and the blocking
    curve's top and random sets when `curve` is given. Not the steering settings: they act at the answer
    positions, which hf-modarb cannot find in text-only loglikelihood tasks (most lm-eval benchmarks)."""
    method, top = chosen
    runs = [("baseline", baseline), (f"block top ({method})", top)]
    runs += [(f"block top ({name})", run) for name, run in by_ranking.items()]
    runs += [("amplify (learned gates)", amplified.run)]
    runs += [(f"amplify top x{point.alpha:g}", point.run) for point in sweep]
    for point in curve:
        label = f"{100 * point.fraction:g}%"
        runs += [(f"curve: block top {label}", point.top)]
        runs += [(f"curve: block random {label} #{i}", run) for i, run in enumerate(point.random, 1)]
    unique: dict[int, tuple[str, Any]] = {}
    for label, run in runs:  # the headline top set is on the curve too: scored once, under its first label
        unique.setdefault(id(run), (label, run))
    return list(unique.values())


def score_controls(evaluator, control_set: ControlSet, runs: Sequence[tuple[str, Any]], progress=lambda _: None) -> dict:
    """Score `control_set` under each run's spec with `evaluator`, whose limit and include path are the
    controls'; returns summary.json's "preserved_ability"."""
    scored = []
    for label, run in runs:
        progress(f"controls: {label}")
        scored.append((label, evaluator.run(run.name, run.spec, tasks=control_set.names)))
    return preserved_ability(control_set, scored)
