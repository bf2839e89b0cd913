"""Leaderboard entries: lm-eval results files turned into one normalised JSON per run.

Why normalise: lm-eval's results JSON mixes metrics, configs, environment dumps and groups; the
board and `modarb check` need a small stable record (who, which intervention, when, which
versions, per-task metrics with stderr and n) and a content hash to refuse duplicate runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from modarb_tasks.catalog import (HEADLINE_METRIC, SLOTS, Metric, catalog,  # noqa: F401 (re-exported)
                                  suite_task, task_slot)
from modarb_tasks.errors import ModarbError
from modarb_tasks.files import write_atomic
from modarb_tasks.results import number, task_score

ENTRY_SCHEMA = "modarb-leaderboard-entry/1"
KINDS = ("result", "smoke")
DEFAULT_MODEL = "modarb-organism"
BASELINE = {"identity": "none", "name": "baseline"}
ENTRIES_DIR = Path(__file__).resolve().parent / "entries"

_HOW_TO_GET = "pass the results_*.json (or its folder) that `lm_eval --output_path` writes"


_NUMBER_OR_NULL = {"type": ["number", "null"]}
_STRING_OR_NULL = {"type": ["string", "null"]}
# The parts of an lm-eval results file that an entry is made from (lm-eval writes far more).
RESULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "results": {"type": "object", "additionalProperties": {"type": "object"}},
        "n-samples": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"effective": {"type": "integer", "minimum": 0},
                                             "original": {"type": ["integer", "null"], "minimum": 0}}}},
        "config": {"type": "object", "properties": {
            "model": _STRING_OR_NULL, "model_args": {"type": ["string", "object", "null"]},
            "limit": _NUMBER_OR_NULL, "modarb_spec_identity": _STRING_OR_NULL, "modarb_spec_name": _STRING_OR_NULL,
            "modarb_version": _STRING_OR_NULL}},
        "date": {"type": "number", "minimum": 0, "maximum": 253402300799},  # up to the year 9999
        "lm_eval_version": _STRING_OR_NULL,
        "transformers_version": _STRING_OR_NULL,
    },
}
_METRIC = {"type": "object", "required": ["value", "stderr"],
           "properties": {"value": {"type": "number", "minimum": 0, "maximum": 1}, "stderr": _NUMBER_OR_NULL}}
# A stored entry, as the board and `check` read it.
ENTRY_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "kind", "model", "intervention", "date", "tasks", "source"],
    "properties": {
        "kind": {"enum": list(KINDS)},
        "model": {"type": "string"},
        "intervention": {"type": "object", "required": ["identity", "name"],
                         "properties": {"identity": {"type": "string"}, "name": {"type": "string"}}},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"},
        "tasks": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["n", "metrics"],
            "properties": {"n": {"type": "integer", "minimum": 0},
                           "metrics": {"type": "object", "additionalProperties": _METRIC}}}},
        "source": {"type": "object", "required": ["file", "sha256"],
                   "properties": {"file": {"type": "string"}, "sha256": {"type": "string"}}},
        "controls": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["n", "metric", "higher_is_better", "value", "stderr"],
            "properties": {"n": {"type": "integer", "minimum": 0}, "metric": {"type": "string"},
                           "higher_is_better": {"type": "boolean"}, "value": {"type": "number"},
                           "stderr": _NUMBER_OR_NULL}}},
    },
}


class DuplicateEntryError(ModarbError):
    """The run is already on the leaderboard; refused unless replacing is asked for."""


def find_results_files(path: Path) -> list[Path]:
    """The results JSON files at `path`: the file itself, or every results_*.json below a folder."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("results_*.json") if p.is_file())
        if found:
            return found
        raise ModarbError(f"{path}: no results_*.json inside; {_HOW_TO_GET}")
    raise ModarbError(f"{path}: no such file or folder; {_HOW_TO_GET}")


def load_results(path: Path) -> dict[str, Any]:
    """Parse an lm-eval results file and check it has the parts an entry is made from."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModarbError(f"{path}: malformed results file (not UTF-8 text); {_HOW_TO_GET}") from None
    except json.JSONDecodeError as err:
        raise ModarbError(
            f"{path}: malformed JSON ({err.msg} at line {err.lineno}); {_HOW_TO_GET}") from None
    if not isinstance(data, dict):
        raise ModarbError(f"{path}: not an lm-eval results file (top level is not an object); {_HOW_TO_GET}")
    for key, kind in (("results", dict), ("config", dict), ("n-samples", dict), ("date", (int, float))):
        if not isinstance(data.get(key), kind):
            raise ModarbError(
                f"{path}: not an lm-eval results file (no valid {key!r} key); {_HOW_TO_GET}")
    _validate(data, RESULTS_SCHEMA, path, "results file")
    return data


def _validate(document: Any, schema: dict[str, Any], path: Path, what: str) -> None:
    """ModarbError naming the file and the first field that does not fit `schema`."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "top level"
        raise ModarbError(f"{path}: malformed {what}: {where}: {error.message.splitlines()[0][:200]}; "
                          "restore the file as modarb or lm-eval wrote it")


def parse_model_args(model_args: str | dict | None) -> dict[str, str]:
    """lm-eval stores model_args as the CLI's dict or the Python API's 'k=v,k=v' string."""
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    pairs = (part.partition("=") for part in (model_args or "").split(",") if part.strip())
    return {key.strip(): value.strip() for key, _, value in pairs}


def _task_metrics(task: str, scores: dict[str, Any], path: Path) -> tuple[str, dict[str, dict]]:
    """The metrics of one task under one filter ("none" when present), each with its stderr."""
    by_filter: dict[str, dict[str, dict]] = {}
    for key, value in scores.items():
        name, sep, filter_name = key.partition(",")
        if not sep or name.endswith("_stderr") or number(value) is None:
            continue
        if not 0.0 <= value <= 1.0:  # every modarb metric is a share of items
            raise ModarbError(f"{path}: task {task} metric {name!r} is {value}, outside 0..1; "
                              f"the file was edited or is not modarb's; {_HOW_TO_GET}")
        stderr = number(scores.get(f"{name}_stderr,{filter_name}"))
        by_filter.setdefault(filter_name, {})[name] = {"value": float(value), "stderr": stderr}
    if not by_filter:
        raise ModarbError(f"{path}: task {task} has no metric values; {_HOW_TO_GET}")
    filter_name = "none" if "none" in by_filter else min(by_filter)
    metrics = by_filter[filter_name]
    needed = catalog().tasks[task].headline
    if needed not in metrics:
        raise ModarbError(f"{path}: task {task} lacks the {needed!r} metric; "
                          "run it with modarb's task YAMLs (modarb tasks-path)")
    return filter_name, dict(sorted(metrics.items()))


def entry_from_results(data: dict[str, Any], path: Path, source_sha256: str, *,
                       kind: str = "result", model_name: str | None = None) -> dict[str, Any]:
    """Normalise a loaded lm-eval results dict (see load_results) into an entry."""
    if kind not in KINDS:
        raise ModarbError(f"entry kind {kind!r} unknown; use one of {', '.join(KINDS)}")
    ours = sorted(task for task in data["results"] if task in catalog().tasks)
    if not ours:
        found = ", ".join(sorted(data["results"])[:5]) or "nothing"
        raise ModarbError(f"{path}: no modarb task in these results (found: {found}); "
                          "run lm_eval with --tasks modarb (or modality_following, modality_controls)")
    tasks = {}
    for task in ours:
        counts = data["n-samples"].get(task)
        if not isinstance(counts, dict) or not isinstance(counts.get("effective"), int):
            raise ModarbError(f"{path}: no sample count for task {task} in 'n-samples'; {_HOW_TO_GET}")
        filter_name, metrics = _task_metrics(task, data["results"][task], path)
        tasks[task] = {"filter": filter_name, "n": counts["effective"],
                       "n_original": counts.get("original"), "metrics": metrics}
        items = logged_outcomes(path, task, filter_name)
        if items is not None:
            if len(items["outcomes"]) != counts["effective"]:
                raise ModarbError(f"{path}: task {task} scored {counts['effective']} items but its samples file "
                                  f"holds {len(items['outcomes'])}; keep the samples file of this run beside it")
            tasks[task]["items"] = items
    controls = control_records(data, path)
    config = data["config"]
    model_args = parse_model_args(config.get("model_args"))
    identity = config.get("modarb_spec_identity")
    intervention = (dict(BASELINE) if not identity or identity == "none" else
                    {"identity": str(identity), "name": str(config.get("modarb_spec_name") or identity)})
    return {
        "schema": ENTRY_SCHEMA,
        "kind": kind,
        "model": model_name or model_args.get("pretrained") or DEFAULT_MODEL,
        "intervention": intervention,
        "date": datetime.fromtimestamp(data["date"], tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {"lm_eval": data.get("lm_eval_version"), "modarb": config.get("modarb_version"),
                     "transformers": data.get("transformers_version")},
        "lm_eval_model": config.get("model"),
        "model_args": dict(sorted(model_args.items())),
        "limit": config.get("limit"),
        "cache": cache_used(config),
        "tasks": tasks,
        "source": {"file": path.name, "sha256": source_sha256},
    } | ({"controls": controls} if controls else {})


def control_records(data: dict[str, Any], path: Path) -> dict[str, dict]:
    """The other lm-eval tasks the run scored beside modarb's (extra controls: MMMU, ARC, the user's own),
    each by its primary metric as lm-eval defines it: the first of its metric_list (a group: the first
    of its scores) and that metric's higher_is_better. A group's own tasks are not listed apart."""
    modarb = set(catalog().tasks) | set(catalog().groups)
    members = {task for group, tasks in (data.get("group_subtasks") or {}).items() for task in tasks}
    records = {}
    for name in sorted(set(data["results"]) - modarb - members):
        better = (data.get("higher_is_better") or {}).get(name) or {}
        listed = ((data.get("configs") or {}).get(name) or {}).get("metric_list") or [{}]
        metric = listed[0].get("metric") if isinstance(listed[0].get("metric"), str) else next(iter(better), None)
        row = data["results"][name]
        filter_name = next((key.partition(",")[2] for key in row if key.partition(",")[0] == metric), "none")
        score = task_score(data, name, metric, filter_name) if isinstance(metric, str) else None
        if score is None or not isinstance(better.get(metric), bool):
            continue  # no numeric primary metric with a direction: nothing to compare
        records[name] = {"metric": metric, "filter": filter_name, "higher_is_better": better[metric], "n": score.n,
                         "value": score.value, "stderr": score.stderr}
        items = logged_outcomes(path, name, filter_name, metric)
        if items is not None and len(items["outcomes"]) == score.n:
            records[name]["items"] = items
    return records


def outcome_record(by_doc: dict[int, int]) -> dict[str, str]:
    """Per-item outcomes, compact: one 0/1 character per doc in doc-id order, and the doc-id list's
    hash, so two entries pair only when they scored the same docs."""
    doc_ids = sorted(by_doc)
    return {"doc_ids_sha256": hashlib.sha256(",".join(map(str, doc_ids)).encode()).hexdigest(),
            "outcomes": "".join(str(by_doc[doc]) for doc in doc_ids)}


def logged_outcomes(results_path: Path, task: str, filter_name: str, metric: str | None = None) -> dict[str, str] | None:
    """The task's per-item outcomes from lm-eval's --log_samples file beside the results
    (samples_<task>_<date>.jsonl, the results file's date), or None when it was not logged.

    `metric`: an extra control's primary metric, whose items pair only when each is 0 or 1 (else None);
    default: the modarb task's headline, which is 0/1 per item (anything else is a damaged file)."""
    samples = results_path.with_name(f"samples_{task}_{results_path.stem.removeprefix('results_')}.jsonl")
    if not samples.is_file():
        return None
    control = metric is not None
    metric = metric or catalog().tasks[task].headline
    by_doc: dict[int, int] = {}
    try:
        for line_number, line in enumerate(samples.read_text(encoding="utf-8").splitlines(), 1):
            sample = json.loads(line)
            if sample.get("filter", filter_name) != filter_name:
                continue
            doc_id, outcome = sample.get("doc_id"), sample.get(metric)
            if not isinstance(doc_id, int) or outcome not in (0, 1):
                if control and isinstance(doc_id, int):
                    return None  # a score per item (a BLEU, a perplexity): compared by its stderr instead
                raise ModarbError(f"{samples}: line {line_number} has no integer doc_id and 0/1 {metric!r}; "
                                  "re-run lm_eval with --log_samples")
            by_doc[doc_id] = int(outcome)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModarbError(f"{samples}: malformed samples file (not JSON lines); "
                          "re-run lm_eval with --log_samples") from None
    return outcome_record(by_doc) if by_doc else None


def cache_used(config: dict[str, Any]) -> dict[str, Any] | None:
    """Whether the run answered from lm-eval's --use_cache and what its keys covered (None: no cache).

    modarb's scoped cache keys by request, model and spec; a stock lm-eval cache by the request only,
    so an entry built from one may hold another model's or intervention's answers."""
    if not config.get("use_cache"):
        return None
    scoped = config.get("modarb_cache")
    if isinstance(scoped, dict):
        return {"key_scope": ["request", *scoped.get("key_scope", [])], "scope_id": scoped.get("scope_id")}
    return {"key_scope": ["request"], "scope_id": None}


def read_results_entry(path: Path, *, kind: str = "result", model_name: str | None = None) -> dict[str, Any]:
    """One results file -> entry (not stored)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return entry_from_results(load_results(path), path, digest, kind=kind, model_name=model_name)


def run_key(entry: dict[str, Any]) -> str:
    """Identity of a run apart from its file: same model, intervention, date and metrics."""
    core = {k: entry[k] for k in ("model", "date", "tasks", "controls") if k in entry} | {
        "spec": entry["intervention"]["identity"]}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def _slug_part(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")[:48] or "x"


def entry_slug(entry: dict[str, Any]) -> str:
    """File stem: readable (model, intervention, date) and unique (source hash prefix)."""
    stamp = entry["date"].replace("-", "").replace(":", "").rstrip("Z")
    parts = (entry["kind"], entry["model"], entry["intervention"]["name"], stamp)
    return "__".join(_slug_part(p) for p in parts) + "__" + entry["source"]["sha256"][:8]


def read_entry(path: Path) -> dict[str, Any]:
    """A stored entry, checked to be one."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModarbError(f"{path}: malformed leaderboard entry (not JSON); "
                          "re-create it with `modarb leaderboard add`") from None
    if not isinstance(entry, dict) or entry.get("schema") != ENTRY_SCHEMA:
        raise ModarbError(f"{path}: not a leaderboard entry (schema is not {ENTRY_SCHEMA}); "
                          "re-create it with `modarb leaderboard add`")
    _validate(entry, ENTRY_JSON_SCHEMA, path, "leaderboard entry")
    unknown = sorted(set(entry.get("tasks", {})) - set(catalog().tasks))
    if unknown:
        raise ModarbError(f"{path}: task {unknown[0]} is not in modarb's task pack (modarb_tasks/tasks); "
                          "restore its YAML or remove the entry")
    return entry


def load_entries(folder: Path = ENTRIES_DIR) -> dict[str, dict[str, Any]]:
    """Slug -> entry for every stored entry, in slug order."""
    return {path.stem: read_entry(path) for path in sorted(folder.glob("*.json"))}


class RunIndex:
    """Entries by results-file hash and by run key, so finding a duplicate run costs one lookup."""

    def __init__(self, entries: dict[str, dict[str, Any]] | None = None) -> None:
        self.by_source: dict[str, str] = {}
        self.by_run: dict[str, str] = {}
        for slug, entry in (entries or {}).items():
            self.add(slug, entry)

    def add(self, slug: str, entry: dict[str, Any]) -> None:
        self.by_source.setdefault(entry["source"]["sha256"], slug)
        self.by_run.setdefault(run_key(entry), slug)

    def duplicate_of(self, entry: dict[str, Any]) -> tuple[str, str] | None:
        """(slug, reason) of an indexed entry that records the same run, if any."""
        if (slug := self.by_source.get(entry["source"]["sha256"])) is not None:
            return slug, "same results file"
        if (slug := self.by_run.get(run_key(entry))) is not None:
            return slug, "same model, intervention, date and metrics"
        return None


def entry_bytes(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class AddPlan:
    """What an `add` will do, decided before anything is written: the entries to write (slug -> entry),
    the stored entries they replace (--replace), and the results files whose identical entry is stored
    already (a re-run of an interrupted add skips them)."""

    entries_dir: Path
    new: dict[str, dict[str, Any]]
    stale: list[str]
    skipped: list[tuple[Path, str]]  # (results file, slug of its identical stored entry)

    def write(self) -> Iterator[Path]:
        """Write the entries one by one (each atomically), yielding each path once it is whole; then
        remove the replaced ones. Interrupted, every entry yielded so far is whole and stays."""
        for slug, entry in self.new.items():
            target = self.entries_dir / f"{slug}.json"
            write_atomic(target, entry_bytes(entry))
            yield target
        for slug in set(self.stale) - set(self.new):
            (self.entries_dir / f"{slug}.json").unlink()


def plan_add(paths: Sequence[Path], entries_dir: Path = ENTRIES_DIR, *, kind: str = "result",
             replace: bool = False, model_name: str | None = None) -> AddPlan:
    """Check every results file found at `paths` and decide what to store; nothing is written here."""
    stored = load_entries(entries_dir) if entries_dir.is_dir() else {}
    stored_runs, new_runs = RunIndex(stored), RunIndex()
    new: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    skipped: list[tuple[Path, str]] = []
    for results_file in (found for path in paths for found in find_results_files(path)):
        entry = read_results_entry(results_file, kind=kind, model_name=model_name)
        if (twin := new_runs.duplicate_of(entry)) is not None:
            raise DuplicateEntryError(f"{results_file}: {twin[1]} as another file in this batch; "
                                      "add only one of them")
        slug = entry_slug(entry)
        if slug in stored and entry_bytes(stored[slug]) == entry_bytes(entry) and not replace:
            skipped.append((results_file, slug))
            continue
        if (twin := stored_runs.duplicate_of(entry)) is not None:
            if not replace:
                raise DuplicateEntryError(
                    f"{results_file}: already on the leaderboard as {twin[0]}.json ({twin[1]}); "
                    "pass --replace to overwrite that entry")
            stale.append(twin[0])
        new[slug] = entry
        new_runs.add(slug, entry)
    return AddPlan(entries_dir, new, stale, skipped)


def add_results(paths: Sequence[Path], entries_dir: Path = ENTRIES_DIR, *, kind: str = "result",
                replace: bool = False, model_name: str | None = None) -> list[Path]:
    """Store an entry per results file found at `paths` (all checked before any is written); returns
    the paths written (files whose identical entry is stored already are skipped)."""
    return list(plan_add(paths, entries_dir, kind=kind, replace=replace, model_name=model_name).write())


def load_scores(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(task -> task record, extra control -> its record) from a stored entry or an lm-eval results
    file/folder (for `check`)."""
    files = find_results_files(path)
    if len(files) != 1:
        raise ModarbError(f"{path}: holds {len(files)} results files; pass one of them")
    entry = read_entry(files[0]) if _is_entry(files[0]) else read_results_entry(files[0])
    return entry["tasks"], entry.get("controls", {})


def _is_entry(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False  # load_results reports what is wrong with it
    return isinstance(data, dict) and data.get("schema") == ENTRY_SCHEMA


def headline(task: str, record: dict[str, Any]) -> Metric | None:
    """The metric the board and `check` use for a task (mf_ratio or acc), if recorded."""
    metric = record["metrics"].get(catalog().tasks[task].headline)
    return None if metric is None else Metric(metric["value"], metric["stderr"], record["n"])
