"""lm-eval's own CLI, run unchanged with modarb's tasks on the include path and its models registered.

lm-eval 0.4.13 discovers no plugins, so `modarb eval` does the two things a plugin needs
before handing over: import our model class (it registers `hf-modarb`) and make every
TaskManager lm-eval creates also index our task folder (any --include_path still works).
It also guards the run (`guard_lm_eval`): bad arguments stop with one line before any model or
task is loaded, a model that cannot run the chosen tasks stops before the first request, and a
run whose results file was not written exits non-zero (lm-eval itself only warns).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
from pathlib import Path

from modarb_tasks.errors import ModarbError
from modarb_tasks.outdir import check_writable
from modarb_tasks import TASKS_PATH

DEFAULT_MODEL = "hf-modarb"
_SUBCOMMANDS = ("run", "ls", "validate")
# lm-eval warnings that say nothing about the user's run: once per task and per model load.
_NOISE = {
    "lm_eval.api.task": "Custom kwargs can be passed to `--metadata`",
    "lm_eval.models.huggingface": "HF model type is neither marked as CausalLM",
}


def register_modarb() -> None:
    """Register `hf-modarb` and put our task folder on every TaskManager's include path."""
    import lm_eval.models  # noqa: F401  (registers the stock models lazily, hf-multimodal among them)
    from lm_eval.api.registry import model_registry
    from lm_eval.tasks import manager

    from interventions.model import cache

    if DEFAULT_MODEL not in model_registry:  # imported (with torch) only when a run creates it
        model_registry.register(DEFAULT_MODEL, target="interventions.model.lm:ModarbVLM")
    cache.install()  # --use_cache keys answers by model and spec too

    original = manager.TaskManager.__init__
    if getattr(original, "_modarb", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        paths = bound.arguments.get("include_path") or []
        paths = list(paths) if isinstance(paths, (list, tuple)) else [paths]
        if TASKS_PATH not in map(str, paths):
            paths.append(TASKS_PATH)
        bound.arguments["include_path"] = paths
        if _ONLY_MODARB_TASKS:
            bound.arguments["include_defaults"] = False
        original(*bound.args, **bound.kwargs)

    __init__._modarb = True
    manager.TaskManager.__init__ = __init__
    quiet_known_warnings()
    _name_the_organism()


def _name_the_organism() -> None:
    """Results of a run without `pretrained=` (the bundled organism) go under its name, not a random one."""
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    from interventions.organism import ORGANISM_NAME

    original = GeneralConfigTracker._get_model_name
    if getattr(original, "_modarb", False):
        return

    def model_name(model_args):
        return original(model_args) or ORGANISM_NAME

    model_name._modarb = True
    GeneralConfigTracker._get_model_name = staticmethod(model_name)


def with_default_model(argv: list[str]) -> list[str]:
    """Evaluate the bundled organism through `hf-modarb` when no --model is given."""
    is_run = not argv or argv[0] == "run" or argv[0] not in _SUBCOMMANDS
    given = any(a in ("--model", "-M") or a.startswith("--model=") for a in argv)
    if not is_run or given or argv in ([], ["run"]):
        return argv
    return [*argv, "--model", DEFAULT_MODEL]


def quiet_known_warnings() -> None:
    """Drop lm-eval's warnings that repeat per task or model load (a filter on their loggers, so
    lm-eval's own `setup_logging`, run again by every `simple_evaluate`, cannot bring them back)."""
    for name, text in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(getattr(f, "_modarb", False) for f in logger.filters):
            drop = logging.Filter()
            drop.filter = lambda record, text=text: text not in str(record.msg)
            drop._modarb = True
            logger.addFilter(drop)


def check_run_config(cfg, device: str | None) -> None:
    """One-line errors for a run's arguments, before lm-eval loads a model or builds a task;
    `device` is the --device given (lm-eval's own default, cuda:0, falls back to the CPU by itself)."""
    from interventions.model.model_files import check_device

    if cfg.output_path:
        path = Path(cfg.output_path)
        if path.is_file() and path.suffix != ".json":
            raise ModarbError(f"--output_path {path} is a file; give a folder (lm-eval writes "
                              "<folder>/<model>/results_<date>.json) or a new name ending in .json")
        check_writable(path.parent if path.suffix == ".json" else path, "--output_path")
    check_device(device)
    if cfg.limit is not None and not cfg.limit > 0:
        raise ModarbError(f"--limit {cfg.limit:g} must be > 0: a number of docs per task, or a fraction of them in (0, 1)")
    if cfg.model == DEFAULT_MODEL:
        from interventions.model.model_args import check_cli_model_args

        check_cli_model_args(cfg.model_args or {})


def check_tasks(lm, task_dict) -> None:
    """Stop before the first request when the model cannot run one of the tasks, naming it."""
    from lm_eval.api.model import CachingLM

    from interventions.model.lm import ModarbVLM
    from interventions.model.model_args import is_multimodal_task

    while isinstance(lm, CachingLM):  # --use_cache wraps the model: check the model itself
        lm = lm.lm
    tasks = _leaf_tasks(task_dict)
    with_images = [name for name, task in tasks if is_multimodal_task(task)]
    text_only = [name for name, task in tasks if not is_multimodal_task(task)]
    if isinstance(lm, ModarbVLM):
        lm.check_tasks(tasks)
    elif getattr(lm, "MULTIMODAL", False) and with_images and text_only:
        raise ModarbError(f"stock {type(lm).__name__} cannot mix image and text-only tasks in one run "
                          f"({with_images[0]} has images, {text_only[0]} has none); use --model hf-modarb, "
                          "which routes each request, or run the tasks separately")


def _leaf_tasks(task_dict) -> list[tuple[str, object]]:
    """(name, task) of every task in lm-eval's nested {group: {task: Task}} dict (groups are not tasks)."""
    from lm_eval.api.task import Task

    leaves = []
    for key, value in task_dict.items():
        if isinstance(value, dict):
            leaves += _leaf_tasks(value)
        elif isinstance(value, Task):
            leaves.append((str(getattr(value.config, "task", key)), value))
    return leaves


class ResultsNotSaved(ModarbError):
    """lm-eval ran but could not write its results file: the run failed, whatever lm-eval's exit says."""


_UNSAVED: list[str] = []  # output paths whose results file lm-eval did not write in this process
# True once a run asks only for modarb's tasks: its TaskManager then skips indexing lm-eval's
# ~14k task YAMLs (half a minute of start-up) and reads only modarb's folder.
_ONLY_MODARB_TASKS: list[bool] = []


def modarb_task_names() -> set[str]:
    """Every task, group and tag name modarb's YAMLs define."""
    names = set()
    for path in Path(TASKS_PATH).glob("*.yaml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key in ("task", "group", "tag") and value.strip():
                names.add(value.strip())
    return names


def guard_lm_eval() -> None:
    """Wrap three lm-eval 0.4.13 functions (once): its argument parsing (`EvaluatorConfig.from_cli`),
    `evaluator.evaluate` (tasks are built, no request yet) and `save_results_aggregated`."""
    from lm_eval import evaluator
    from lm_eval.config.evaluate_config import EvaluatorConfig
    from lm_eval.loggers.evaluation_tracker import EvaluationTracker

    if getattr(evaluator.evaluate, "_modarb", False):
        return
    from_cli = EvaluatorConfig.from_cli.__func__

    def checked_from_cli(cls, namespace):
        try:
            cfg = from_cli(cls, namespace)
        except (ValueError, TypeError, FileNotFoundError) as error:  # lm-eval's own argument checks
            raise ModarbError(f"{str(error).strip().splitlines()[0]}; see `modarb eval run --help`") from None
        check_run_config(cfg, getattr(namespace, "device", None))
        tasks = cfg.tasks.split(",") if isinstance(cfg.tasks, str) else list(cfg.tasks or [])
        if not [task for task in tasks if str(task).strip()]:
            raise ModarbError("no --tasks given; name tasks or groups, e.g. --tasks modarb (list them with "
                              "`modarb eval ls tasks`)")
        if tasks and set(tasks) <= modarb_task_names():
            _ONLY_MODARB_TASKS.append(True)
        return cfg

    EvaluatorConfig.from_cli = classmethod(checked_from_cli)
    evaluate = evaluator.evaluate

    @functools.wraps(evaluate)
    def checked_evaluate(lm, task_dict, *args, **kwargs):
        check_tasks(lm, task_dict)
        return evaluate(lm, task_dict, *args, **kwargs)

    checked_evaluate._modarb = True
    evaluator.evaluate = checked_evaluate
    save = EvaluationTracker.save_results_aggregated

    @functools.wraps(save)
    def checked_save(self, *args, **kwargs):
        self.date_id = None  # set by lm-eval just before it writes
        save(self, *args, **kwargs)
        if self.output_path and not (self.date_id and _is_whole_json(_results_file(self))):
            if self.date_id and _results_file(self).is_file():  # a full disk leaves a truncated file: remove it
                _results_file(self).unlink()
            _UNSAVED.append(str(self.output_path))

    EvaluationTracker.save_results_aggregated = checked_save


def _is_whole_json(path: Path) -> bool:
    """True when `path` is a file that parses as JSON (lm-eval writes it in place, not atomically)."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _results_file(tracker) -> Path:
    """Where lm-eval 0.4.13's `save_results_aggregated` writes the results file."""
    path = Path(tracker.output_path)
    if path.suffix == ".json":
        return path.with_name(f"{path.stem}_{tracker.date_id}.json")
    return path / str(tracker.general_config_tracker.model_name_sanitized) / f"results_{tracker.date_id}.json"


JSON_FLAGS = ("--model_args", "--metadata", "--gen_kwargs")


def check_json_arguments(argv: list[str]) -> None:
    """One line for a JSON-looking --model_args / --metadata / --gen_kwargs that does not parse (lm-eval's own
    parser raises from inside argparse, with a traceback)."""
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag not in JSON_FLAGS:
            continue
        if not equals:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if value.lstrip().startswith("{"):
            try:
                json.loads(value)
            except ValueError as error:
                raise ModarbError(f"{flag} {value!r} is not valid JSON ({error}); write a JSON object with double "
                                  "quotes, e.g. '{\"shapes_n\": 8}', or key=value pairs") from None


def run_lm_eval(argv: list[str]) -> None:
    """`modarb eval ARGS` = `lm-eval ARGS` with modarb registered (all flags and subcommands)."""
    from lm_eval.__main__ import cli_evaluate

    check_json_arguments(argv)
    register_modarb()
    guard_lm_eval()
    _UNSAVED.clear()
    sys.argv = ["modarb eval", *with_default_model(argv)]
    try:
        cli_evaluate()
    except ValueError as error:
        if str(error).startswith("Tasks not found"):
            raise ModarbError(f"{error}; list the tasks with `modarb eval ls tasks`") from None
        raise
    if _UNSAVED:
        raise ResultsNotSaved(f"lm-eval could not write the results to --output_path {_UNSAVED[-1]} (the scores above "
                              "are not saved; a full disk or a folder that cannot be written); give a writable folder "
                              "with free space and run again")
