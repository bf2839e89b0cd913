"""Score interventions with lm-eval, in-process, on one loaded `hf-modarb` model.

`modarb reproduce` scores dozens of specs. Starting the CLI for each would reload the model
and rebuild the data every time, so this runs lm-eval's own `simple_evaluate` on one model
object and swaps its spec between runs; each run's results file is lm-eval's own format, and
the equivalent `modarb eval` command is recorded beside it, so every number can be recomputed.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from interventions.analysis.data import SHAPES_TASKS, TaskSet
from interventions.model.lm import ModarbVLM
from interventions.mechanism.spec import InterventionSpec
from modarb_tasks import TASKS_PATH
from modarb_tasks.catalog import FOLLOW_SLOTS, HEADLINE_METRIC, MF_RATIO, SLOTS, catalog, pooled_mf_ratio
from modarb_tasks.files import write_text
from modarb_tasks.results import task_score
from modarb_tasks.paired import pair


def headline(tasks: TaskSet) -> dict[str, tuple[str, str]]:
    """summary key (a slot) -> (task, metric) for one task set."""
    return {slot: (getattr(tasks, slot), HEADLINE_METRIC[slot]) for slot in SLOTS}


def headline_scores(results: dict, tasks: TaskSet) -> dict[str, float]:
    """The run's headline numbers from lm-eval's results: each slot's metric that ran, and the MF ratio
    pooled over both follow tasks as the catalog defines it (item-weighted, as the leaderboard shows it)."""
    found = {slot: task_score(results, task, metric) for slot, (task, metric) in headline(tasks).items()
             if task in results["results"]}
    missing = [slot for slot, metric in found.items() if metric is None]
    if missing:  # modarb's own task YAMLs always report it: a bug, not bad input
        raise KeyError(f"lm-eval's results lack the headline metric of {', '.join(missing)}")
    scores = {slot: metric.value for slot, metric in found.items()}
    pooled = pooled_mf_ratio(*(found.get(slot) for slot in FOLLOW_SLOTS))
    if pooled is not None:
        scores[MF_RATIO] = pooled.value
    return scores


@dataclass
class Run:
    """One lm-eval run: its headline scores, per-item outcomes, and how to redo it."""

    name: str
    scores: dict[str, float]
    follow_by_doc: dict[str, dict[int, float]]  # follow task -> doc_id -> follow (0/1)
    type_by_doc: dict[str, dict[int, str]]  # follow task -> doc_id -> question type (MC²: its task type)
    results_file: Path
    command: str
    spec: InterventionSpec | None = None  # what the run scored (None: the plain model)
    samples: dict[str, list[int]] | None = field(default=None, repr=False)
    # task -> doc_id -> its headline outcome (0/1: followed, or correct), for paired comparisons
    outcomes: dict[str, dict[int, int]] = field(default_factory=dict, repr=False)


def paired_vs(baseline: Run, run: Run) -> dict[str, dict]:
    """Each headline score of `run` against `baseline` on the docs both scored, item by item: Δ (run −
    baseline), its 95% paired interval (Newcombe's), the discordant counts b (lost) and c (gained)
    and McNemar's exact p. The MF ratio pools both follow tasks' items, as the score does."""
    slots = {task: catalog().tasks[task].slot for task in baseline.outcomes}
    groups = {slot: [task for task in slots if slots[task] == slot] for slot in SLOTS}
    groups[MF_RATIO] = [task for task in slots if slots[task] in FOLLOW_SLOTS]
    compared = {}
    for key, group in groups.items():
        docs = [(task, doc) for task in group for doc in sorted(baseline.outcomes[task])
                if doc in run.outcomes.get(task, {})]
        if not docs:
            continue
        found = pair([baseline.outcomes[task][doc] for task, doc in docs], [run.outcomes[task][doc] for task, doc in docs])
        low, high = found.interval()
        compared[key] = {"delta": found.delta, "low": low, "high": high, "b": found.b, "c": found.c,
                         "p": found.p_value, "n": found.n}
    return compared


SAMPLE_KEYS = ("doc_id", "filter")


def compact_samples(logged: list[dict]) -> str:
    """lm-eval's --log_samples lines for one task, less the docs, prompts, answers and hashes: each doc's id,
    filter and per-item metrics, so a run pairs item by item with others (a leaderboard entry reads
    them) at ~1% of the size: dozens of runs per report."""
    lines = [{key: sample[key] for key in (*SAMPLE_KEYS, *sample["metrics"])} for sample in logged]
    return "".join(json.dumps(line) + "\n" for line in lines)


class Evaluator:
    """Runs modarb tasks through lm-eval on `lm`, one spec at a time, writing results under `out_dir`."""

    def __init__(
        self,
        lm: ModarbVLM,
        model_arg: str,
        out_dir: Path,
        limit: int | None,
        batch_size: int,
        display_dir: Path | None = None,
        tasks: TaskSet = SHAPES_TASKS,
        use_cache: Path | None = None,
        include_path: Path | None = None,
        task_manager=None,
    ):
        self.lm = lm
        lm.quiet = True  # dozens of runs: the caller's one progress bar, not lm-eval's per run
        self.model_arg = model_arg  # how `modarb eval` names the model ("pretrained=..." or "" for the default)
        self.out_dir = out_dir
        self.display_dir = display_dir or out_dir  # where the runs will be when the user reads the commands
        self.limit = limit
        self.batch_size = batch_size
        self.tasks = tasks  # which tasks score follow image/text and the controls (shapes or MC²)
        # lm-eval's request cache, scoped by model and spec (interventions/model/cache.py): a rerun resumes
        self.use_cache = str(Path(use_cache) / "requests") if use_cache is not None else None
        self.include_path = include_path  # the user's own task YAMLs (lm-eval control tasks), if any
        from lm_eval.tasks import TaskManager

        # modarb's tasks alone unless the caller shares one that indexes lm-eval's too (the controls): indexing
        # lm-eval's own tasks takes seconds, once per reproduce
        self.task_manager = task_manager or TaskManager(include_path=TASKS_PATH, include_defaults=False,
                                                        metadata=tasks.metadata or None)

    def run(
        self,
        name: str,
        spec: InterventionSpec | None,
        tasks: Sequence[str] | None = None,
        samples: dict[str, list[int]] | None = None,
    ) -> Run:
        """Score `tasks` (default: all four of the task set) under `spec` (None: baseline); `samples`
        picks doc ids per task instead of --limit."""
        tasks = (*self.tasks.follow, *self.tasks.controls) if tasks is None else tasks
        import lm_eval
        from lm_eval.loggers import EvaluationTracker

        from interventions.model.lm_eval_adapter import evaluation_run

        run_dir = self.out_dir / name
        model_args = [self.model_arg] if self.model_arg else []
        if spec is not None:
            spec.save(run_dir / "spec.json")
            model_args.append(f"spec={self.display_dir / name / 'spec.json'}")
        model_args = ",".join(model_args)
        tasks = [task for task in tasks if samples is None or samples.get(task)]
        self.lm.spec = spec
        limit = None if samples is not None else self.limit
        # lm-eval with the scoped request cache, and the caller's one progress bar instead of lm-eval's per task
        results = evaluation_run(quiet=True)(lm_eval.simple_evaluate)(
            model=self.lm,
            model_args=model_args,
            tasks=list(tasks),
            limit=limit,
            samples={task: samples[task] for task in tasks} if samples is not None else None,
            batch_size=self.batch_size,
            log_samples=True,
            task_manager=self.task_manager,
            use_cache=self.use_cache,
            verbosity="WARNING",
        )
        logged = results.pop("samples")
        outcomes = {task: {sample["doc_id"]: int(sample[catalog().tasks[task].headline]) for sample in found}
                    for task, found in logged.items() if task in catalog().tasks}
        tracker = EvaluationTracker(output_path=str(run_dir))
        tracker.general_config_tracker.model_name_sanitized = "results"
        tracker.save_results_aggregated(results=results, samples=None)
        for task, found in logged.items():  # a group's samples come under each of its tasks
            write_text(run_dir / "results" / f"samples_{task}_{tracker.date_id}.jsonl", compact_samples(found))
        results_file = max((run_dir / "results").glob("results_*.json"))
        return Run(
            name=name,
            scores=headline_scores(results, self.tasks),
            outcomes=outcomes,
            follow_by_doc={
                task: {sample["doc_id"]: float(sample["follow"]) for sample in logged[task]}
                for task in self.tasks.follow
                if task in logged
            },
            type_by_doc={
                task: {sample["doc_id"]: sample["doc"].get("question_type", "") for sample in logged[task]}
                for task in self.tasks.follow
                if task in logged
            },
            results_file=results_file,
            command=self._command(model_args, tasks, limit, samples),
            spec=spec,
            samples=samples,
        )

    def _command(self, model_args: str, tasks, limit, samples) -> str:
        parts = ["modarb", "eval", "--model", "hf-modarb"] + (["--model_args", model_args] if model_args else [])
        parts += ["--tasks", ",".join(tasks)]
        if self.include_path is not None:
            parts += ["--include_path", str(self.include_path)]
        if self.tasks.metadata:
            parts += ["--metadata", json.dumps(self.tasks.metadata, separators=(",", ":"))]
        parts += ["--batch_size", str(self.batch_size)]
        if self.use_cache is not None:
            parts += ["--use_cache", self.use_cache]
        if limit is not None:
            parts += ["--limit", str(limit)]
        if samples is not None:
            parts += ["--samples", json.dumps({task: samples[task] for task in tasks}, separators=(",", ":"))]
        return shlex.join(parts)


def quiet_lm_eval() -> None:
    """lm-eval logs every task build and warns about --metadata on each; the report is what the user reads.
    `simple_evaluate` resets lm-eval's log level on every run, so the repeated warnings are also filtered."""
    from interventions.model.harness import quiet_known_warnings

    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_known_warnings()
