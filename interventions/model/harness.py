"""lm-eval's own CLI, run unchanged with modarb's tasks on the include path and its models registered.

lm-eval 0.4.13 discovers no plugins, so `modarb eval` does the two things a plugin needs
before handing over: register our model class (`hf-modarb`) and put our task folder on the
include path of every TaskManager the run creates (any --include_path still works). It also
guards the run: bad arguments stop with one line before any model or task is loaded, a model
that cannot run the chosen tasks stops before the first request, and a run whose results file
was not written exits non-zero (lm-eval itself only warns). How each of these reaches into
lm-eval lives in `interventions.model.lm_eval_adapter`, for the length of one run.
"""

from __future__ import annotations

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
    """Register `hf-modarb` in lm-eval's model registry and quiet lm-eval's repeated warnings."""
    import lm_eval.models  # noqa: F401  (registers the stock models lazily, hf-multimodal among them)
    from lm_eval.api.registry import model_registry

    if DEFAULT_MODEL not in model_registry:  # imported (with torch) only when a run creates it
        model_registry.register(DEFAULT_MODEL, target="interventions.model.lm:ModarbVLM")
    quiet_known_warnings()


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


def check_run_config(cfg, namespace) -> None:
    """One-line errors for a run's arguments (lm-eval's parsed config and its CLI namespace), before lm-eval
    loads a model or builds a task."""
    from interventions.model.lm_eval_adapter import requested_tasks
    from interventions.model.model_files import check_device

    if cfg.output_path:
        path = Path(cfg.output_path)
        if path.is_file() and path.suffix != ".json":
            raise ModarbError(f"--output_path {path} is a file; give a folder (lm-eval writes "
                              "<folder>/<model>/results_<date>.json) or a new name ending in .json")
        check_writable(path.parent if path.suffix == ".json" else path, "--output_path")
    check_device(getattr(namespace, "device", None))  # as given: lm-eval's default (cuda:0) falls back to the CPU
    if cfg.limit is not None and not cfg.limit > 0:
        raise ModarbError(f"--limit {cfg.limit:g} must be > 0: a number of docs per task, or a fraction of them in (0, 1)")
    if cfg.model == DEFAULT_MODEL:
        from interventions.model.model_args import check_cli_model_args

        check_cli_model_args(cfg.model_args or {})
    if not requested_tasks(cfg):
        raise ModarbError("no --tasks given; name tasks or groups, e.g. --tasks modarb (list them with "
                          "`modarb eval ls tasks`)")


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


def modarb_task_names() -> set[str]:
    """Every task, group and tag name modarb's YAMLs define."""
    names = set()
    for path in Path(TASKS_PATH).glob("*.yaml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key in ("task", "group", "tag") and value.strip():
                names.add(value.strip())
    return names


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

    from interventions.model.lm_eval_adapter import EvalRun, eval_run
    from interventions.organism import ORGANISM_NAME

    check_json_arguments(argv)
    register_modarb()
    run = EvalRun(include_path=TASKS_PATH, own_tasks=modarb_task_names(), default_model_name=ORGANISM_NAME,
                  check_config=check_run_config, check_tasks=check_tasks)
    sys.argv = ["modarb eval", *with_default_model(argv)]
    try:
        with eval_run(run):
            cli_evaluate()
    except ValueError as error:
        if str(error).startswith("Tasks not found"):
            raise ModarbError(f"{error}; list the tasks with `modarb eval ls tasks`") from None
        raise
    if run.unsaved:
        raise ResultsNotSaved(f"lm-eval could not write the results to --output_path {run.unsaved[-1]} (the scores "
                              "above are not saved; a full disk or a folder that cannot be written); give a writable "
                              "folder with free space and run again")
