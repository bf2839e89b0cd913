"""The task catalog: which slot and suite each modarb task fills, what it is scored by, and how
its follow tasks pool into one MF ratio — the one place the evaluator, the leaderboard and
`modarb check` look these up.

Task facts are read from the task YAMLs (modarb_tasks/tasks), as lm-eval reads them: a task's
slot is its `dataset_kwargs.kind`, its suite is its name with the slot starred (mf_follow_image_ll
-> "mf_*_ll"), groups are the files with a `group:` key. What the YAMLs cannot say (which metric
is a slot's headline, how a score is labelled) is stated here once, and tests/test_catalog.py
checks the YAMLs against it. No torch, no lm-eval: this module is the base layer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modarb_tasks import TASKS_PATH
from modarb_tasks.errors import ModarbError

SLOTS = ("follow_image", "follow_text", "visual_control", "language_control")
"""The four tasks of a suite: conflict items under each instruction, then the two single-evidence controls."""
FOLLOW_SLOTS = SLOTS[:2]
CONTROL_SLOTS = SLOTS[2:]
MF_RATIO = "mf_ratio"
HEADLINE_METRIC = {"follow_image": MF_RATIO, "follow_text": MF_RATIO, "visual_control": "acc", "language_control": "acc"}
"""The metric that stands for a task of each slot (the one its YAML group aggregates)."""
SCORES = (*FOLLOW_SLOTS, MF_RATIO, *CONTROL_SLOTS)
"""A suite's headline numbers in display order: each slot's, and the follow slots pooled."""


@dataclass(frozen=True)
class Label:
    """How a score is named: `heading` in a table's header, `prose` inside a sentence."""

    heading: str
    prose: str


LABELS = {
    "follow_image": Label("Follow image", "follow-image"),
    "follow_text": Label("Follow text", "follow-text"),
    MF_RATIO: Label("MF ratio", "MF ratio"),
    "visual_control": Label("Visual control", "visual control"),
    "language_control": Label("Language control", "language control"),
}


@dataclass(frozen=True)
class Metric:
    """One number with its standard error (None where lm-eval reports N/A) and sample count."""

    value: float
    stderr: float | None
    n: int


def pooled_mf_ratio(*follow: Metric | None) -> Metric | None:
    """The MF ratio over every item of the follow tasks `follow` (None if one is missing).

    Item-weighted, as lm-eval pools a group with `weight_by_size: true`, so it equals the group's
    number. Stderr: that of a weighted mean of independent task means, sqrt(sum((n*se)^2)) / N (None
    if a task has none); it equals lm-eval's pooled stderr when the tasks are of equal size.
    """
    if not follow or any(metric is None for metric in follow):
        return None
    n = sum(metric.n for metric in follow)
    value = sum(metric.n * metric.value for metric in follow) / n
    if any(metric.stderr is None for metric in follow):
        return Metric(value, None, n)
    return Metric(value, math.hypot(*(metric.n * metric.stderr for metric in follow)) / n, n)


@dataclass(frozen=True)
class Task:
    """One task YAML: its slot and suite, and the metrics it reports."""

    name: str
    slot: str
    suite: str
    metrics: tuple[str, ...]

    @property
    def headline(self) -> str:
        return HEADLINE_METRIC[self.slot]


@dataclass(frozen=True)
class Group:
    """One group YAML: its members (tasks or groups) and the metric it aggregates (None: it only lists)."""

    name: str
    members: tuple[str, ...]
    metric: str | None
    weight_by_size: bool


@dataclass(frozen=True)
class Catalog:
    """Every task and group of one task folder, by name."""

    tasks: Mapping[str, Task]
    groups: Mapping[str, Group]

    @functools.cached_property
    def suites(self) -> dict[str, dict[str, str]]:
        """Suite -> slot -> task, suites in name order, slots in SLOTS order."""
        by_suite: dict[str, dict[str, str]] = {}
        for task in sorted(self.tasks.values(), key=lambda task: (task.suite, SLOTS.index(task.slot))):
            by_suite.setdefault(task.suite, {})[task.slot] = task.name
        return by_suite

    def leaf_tasks(self, group: str) -> tuple[str, ...]:
        """The tasks a group scores, its subgroups expanded (lm-eval's leaf tasks)."""
        return tuple(leaf for member in self.groups[group].members
                     for leaf in (self.leaf_tasks(member) if member in self.groups else (member,)))


@functools.cache
def _yaml_loader():
    """PyYAML's safe loader keeping `!function utils.f` as its text: the catalog calls nothing."""
    import yaml

    loader = type("TaskYamlLoader", (getattr(yaml, "CSafeLoader", yaml.SafeLoader),), {})
    loader.add_constructor("!function", lambda self, node: self.construct_scalar(node))
    return loader


def read_yaml(path: Path) -> dict[str, Any]:
    """A task YAML with its `include:` files merged in, as lm-eval merges them (in order, own keys last)."""
    import yaml

    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())  # noqa: S506 (a safe loader)
    includes = config.pop("include", [])
    merged: dict[str, Any] = {}
    for name in [includes] if isinstance(includes, str) else includes:
        merged |= read_yaml(path.parent / name)
    return merged | config


def _task(path: Path, config: dict[str, Any]) -> Task:
    name, slot = config["task"], (config.get("dataset_kwargs") or {}).get("kind")
    if slot not in SLOTS or name.count(slot) != 1:
        raise ModarbError(f"{path}: task {name} has dataset_kwargs.kind {slot!r}; a modarb task's kind is one of "
                          f"{', '.join(SLOTS)} and appears once in its name")
    return Task(name, slot, name.replace(slot, "*"), tuple(m["metric"] for m in config.get("metric_list", [])))


def _group(path: Path, config: dict[str, Any]) -> Group:
    aggregated = config.get("aggregate_metric_list") or [{}]
    if len(aggregated) != 1:
        raise ModarbError(f"{path}: group {config['group']} aggregates {len(aggregated)} metrics; "
                          "a modarb group aggregates one")
    return Group(config["group"], tuple(config["task"]), aggregated[0].get("metric"),
                 bool(aggregated[0].get("weight_by_size", True)))  # lm-eval's default


def read_catalog(folder: Path) -> Catalog:
    """The catalog of every *.yaml in `folder` (the shared _* includes have no .yaml suffix)."""
    tasks, groups = {}, {}
    for path in sorted(folder.glob("*.yaml")):
        config = read_yaml(path)
        if "group" in config:
            groups[config["group"]] = _group(path, config)
        else:
            tasks[config["task"]] = _task(path, config)
    return Catalog(tasks, groups)


@functools.cache
def catalog() -> Catalog:
    """modarb's own task pack (TASKS_PATH), read once."""
    return read_catalog(Path(TASKS_PATH))


def task_slot(task: str) -> tuple[str, str] | None:
    """(suite, slot) of a modarb task: mf_follow_image_ll -> ("mf_*_ll", "follow_image"); None otherwise."""
    found = catalog().tasks.get(task)
    return None if found is None else (found.suite, found.slot)


def suite_task(suite: str, slot: str) -> str | None:
    """The task of `suite` that fills `slot` (None where the suite has none, e.g. mf_*_ll's controls)."""
    return catalog().suites.get(suite, {}).get(slot)
