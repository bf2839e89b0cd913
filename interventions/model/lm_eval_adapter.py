"""Every change modarb makes to lm-eval's own code, in one place, and only for the length of one run.

modarb uses lm-eval's extension points as they are: its model registry (`hf-modarb`), the task include
path (modarb's task folder) and a `CachingLM` subclass (the scoped request cache). What lm-eval 0.4.13
offers no hook for is replaced here, one callable at a time, each with a line saying what, why and for
which lm-eval. A replacement is installed by `patched` for one run, holds that run's state in its
closure and is undone when the run ends, so a second run in the same process starts from lm-eval as
installed. Before anything is replaced, the parameters each replacement relies on are compared with
the installed lm-eval's (`check_lm_eval`): a changed lm-eval stops with one line, not a wrong run.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from modarb_tasks.errors import ModarbError

LM_EVAL_VERSION = "0.4.13"  # the lm-eval release every replacement below was written against

TASK_MANAGER = "lm_eval.tasks.manager:TaskManager.__init__"
MODEL_NAME = "lm_eval.loggers.evaluation_tracker:GeneralConfigTracker._get_model_name"
FROM_CLI = "lm_eval.config.evaluate_config:EvaluatorConfig.from_cli"
EVALUATE = "lm_eval.evaluator:evaluate"
SAVE_RESULTS = "lm_eval.loggers.evaluation_tracker:EvaluationTracker.save_results_aggregated"
CACHING_LM = "lm_eval.api.model:CachingLM"
TASK_BAR = "lm_eval.api.task:tqdm"

# Each replaced callable -> its parameters in lm-eval 0.4.13 (names, kinds and defaults; annotations left out).
EXPECTED = {
    TASK_MANAGER: "(self, verbosity=None, include_path=None, include_defaults=True, metadata=None)",
    MODEL_NAME: "(model_args)",
    FROM_CLI: "(namespace)",
    EVALUATE: "(lm, task_dict, limit=None, samples=None, cache_requests=False, rewrite_requests_cache=False, "
              "bootstrap_iters=100000, write_out=False, log_samples=True, system_instruction=None, "
              "apply_chat_template=False, fewshot_as_multiturn=False, verbosity='INFO', confirm_run_unsafe_code=False)",
    SAVE_RESULTS: "(self, results, samples=None)",
    CACHING_LM: "(lm, cache_db)",
    TASK_BAR: "(*_, **__)",
}


class LmEvalChanged(ModarbError):
    """The installed lm-eval's code is not what this adapter was written against."""


def parameters(function: Callable) -> str:
    """`function`'s parameters as text, without annotations (lm-eval's are strings that move with its typing)."""
    signature = inspect.signature(function)
    plain = [parameter.replace(annotation=inspect.Parameter.empty) for parameter in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=inspect.Signature.empty))


def _owner(target: str) -> tuple[Any, str]:
    """The module or class holding `target` ('module:attribute' or 'module:Class.attribute'), and the name."""
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def check_lm_eval(targets: dict[str, str] = EXPECTED) -> None:
    """LmEvalChanged, in one line naming the installed lm-eval, when a target's parameters are not the expected ones."""
    for target, expected in targets.items():
        name = target.partition(":")[2]
        try:
            owner, attribute = _owner(target)
            found = f"takes {parameters(getattr(owner, attribute))}"
        except (ImportError, AttributeError):
            found = "no longer exists"
        if found != f"takes {expected}":
            raise LmEvalChanged(f"lm-eval {metadata.version('lm-eval')} changed {name}: it {found}, while lm-eval "
                                f"{LM_EVAL_VERSION}, which modarb's lm-eval adapter was written against, takes "
                                f"{expected}; install lm-eval=={LM_EVAL_VERSION}")


@contextmanager
def patched(replacements: dict[str, Callable[[Any], Any]]) -> Iterator[None]:
    """lm-eval with each target of `replacements` (from EXPECTED) replaced inside the block by what its function
    makes of lm-eval's own value, and as installed after the block."""
    check_lm_eval({target: EXPECTED[target] for target in replacements})
    saved = []
    try:
        for target, replace in replacements.items():
            owner, name = _owner(target)
            saved.append((owner, name, inspect.getattr_static(owner, name)))  # the raw staticmethod/classmethod
            setattr(owner, name, replace(getattr(owner, name)))
        yield
    finally:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)


@dataclass
class EvalRun:
    """One `modarb eval` run: what it adds to lm-eval's CLI and what it learns while lm-eval runs.
    Made fresh for each run, so nothing one run decides reaches the next."""

    include_path: str  # indexed by every TaskManager of the run, after any --include_path
    own_tasks: set[str]  # the task, group and tag names include_path defines
    default_model_name: str  # the results folder of a run that names no pretrained=
    check_config: Callable[[Any, Any], None]  # (lm-eval's parsed config, the CLI namespace): raise on bad arguments
    check_tasks: Callable[[Any, dict], None]  # (model, built tasks), before the first request: raise if it cannot run
    include_defaults: bool = True  # False once the run asks only for own_tasks
    unsaved: list[str] = field(default_factory=list)  # --output_path values whose results file was not written


def requested_tasks(cfg) -> list[str]:
    """The --tasks of lm-eval's parsed config (a comma-separated string or a list), blanks dropped."""
    tasks = cfg.tasks.split(",") if isinstance(cfg.tasks, str) else list(cfg.tasks or [])
    return [str(task) for task in tasks if str(task).strip()]


def _task_manager(run: EvalRun, original: Callable) -> Callable:
    # Replaces TaskManager.__init__ (lm-eval 0.4.13): its CLI builds the TaskManager of `run`, `ls` and `validate`
    # itself, from --include_path alone, so modarb's folder joins it here; and lm-eval's own ~14k task YAMLs (half
    # a minute of start-up) are skipped when the run asks only for modarb's tasks, which the CLI cannot express.
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        paths = bound.arguments.get("include_path") or []
        paths = list(paths) if isinstance(paths, (list, tuple)) else [paths]
        if run.include_path not in map(str, paths):
            paths.append(run.include_path)
        bound.arguments["include_path"] = paths
        if not run.include_defaults:
            bound.arguments["include_defaults"] = False
        original(*bound.args, **bound.kwargs)

    return __init__


def _model_name(run: EvalRun, original: Callable) -> staticmethod:
    # Replaces GeneralConfigTracker._get_model_name (lm-eval 0.4.13), which names the results folder after
    # pretrained= and otherwise draws a random name: a run of the bundled organism goes under the organism's name.
    def model_name(model_args):
        return original(model_args) or run.default_model_name

    return staticmethod(model_name)


def _from_cli(run: EvalRun, original: Callable) -> classmethod:
    # Replaces EvaluatorConfig.from_cli (lm-eval 0.4.13), where the CLI's arguments become a config before any
    # model or task loads: lm-eval's own argument errors become one line (it raises them with a traceback),
    # modarb's checks run, and the run learns whether it asks only for modarb's tasks.
    function = original.__func__

    def from_cli(cls, namespace):
        try:
            cfg = function(cls, namespace)
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise ModarbError(f"{str(error).strip().splitlines()[0]}; see `modarb eval run --help`") from None
        run.check_config(cfg, namespace)
        tasks = requested_tasks(cfg)
        run.include_defaults = not (tasks and set(tasks) <= run.own_tasks)
        return cfg

    return classmethod(from_cli)


def _evaluate(run: EvalRun, original: Callable) -> Callable:
    # Replaces evaluator.evaluate (lm-eval 0.4.13; `simple_evaluate` looks it up at call time), the first point
    # where the model and the built tasks are both known and no request has been sent: a model that cannot run
    # a task stops there, naming it, instead of failing or scoring nonsense mid-run.
    @functools.wraps(original)
    def evaluate(lm, task_dict, *args, **kwargs):
        run.check_tasks(lm, task_dict)
        return original(lm, task_dict, *args, **kwargs)

    return evaluate


def _save_results(run: EvalRun, original: Callable) -> Callable:
    # Replaces EvaluationTracker.save_results_aggregated (lm-eval 0.4.13), which only logs a failed write (the CLI
    # then exits 0) and writes in place: a results file missing or cut short is recorded on the run, and a cut
    # one removed, so `modarb eval` fails instead of leaving a corrupt file behind.
    @functools.wraps(original)
    def save_results_aggregated(self, *args, **kwargs):
        self.date_id = None  # lm-eval sets it just before it writes
        original(self, *args, **kwargs)
        if self.output_path and not (self.date_id and _is_whole_json(_results_file(self))):
            if self.date_id and _results_file(self).is_file():
                _results_file(self).unlink()
            run.unsaved.append(str(self.output_path))

    return save_results_aggregated


def _results_file(tracker) -> Path:
    """Where lm-eval 0.4.13's `save_results_aggregated` writes the results file."""
    path = Path(tracker.output_path)
    if path.suffix == ".json":
        return path.with_name(f"{path.stem}_{tracker.date_id}.json")
    return path / str(tracker.general_config_tracker.model_name_sanitized) / f"results_{tracker.date_id}.json"


def _is_whole_json(path: Path) -> bool:
    """True when `path` is a file that parses as JSON."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _scoped_cache(original: type) -> type:
    # Replaces CachingLM (lm-eval 0.4.13; `simple_evaluate` looks it up at call time and takes no other class):
    # --use_cache answers are keyed by model and spec too, so one run never reads another's.
    from interventions.model.cache import ScopedCachingLM

    return ScopedCachingLM


def _quiet_task_bar(original: type) -> Callable:
    # Replaces the tqdm that Task.build_all_requests draws (lm-eval 0.4.13; no parameter turns it off): an
    # in-process caller that scores dozens of runs shows its own progress, not four bars per run.
    return functools.partial(original, disable=True)


@contextmanager
def eval_run(run: EvalRun) -> Iterator[EvalRun]:
    """lm-eval's CLI adapted to `run` inside the block (the `modarb eval` command)."""
    with patched({
        TASK_MANAGER: functools.partial(_task_manager, run),
        MODEL_NAME: functools.partial(_model_name, run),
        FROM_CLI: functools.partial(_from_cli, run),
        EVALUATE: functools.partial(_evaluate, run),
        SAVE_RESULTS: functools.partial(_save_results, run),
        CACHING_LM: _scoped_cache,
    }):
        yield run


@contextmanager
def evaluation_run(quiet: bool = False) -> Iterator[None]:
    """lm-eval for in-process `simple_evaluate` calls inside the block: the scoped request cache and, with
    `quiet`, no request-building bar per task."""
    with patched({CACHING_LM: _scoped_cache, **({TASK_BAR: _quiet_task_bar} if quiet else {})}):
        yield
