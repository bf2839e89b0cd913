"""lm-eval's own CLI, run unchanged with modarb's tasks on the include path and its models registered.

lm-eval 0.4.13 discovers no plugins, so `modarb eval` does the two things a plugin needs
before handing over: import our model class (it registers `hf-modarb`) and make every
TaskManager lm-eval creates also index our task folder (any --include_path still works).
"""

from __future__ import annotations

import functools
import inspect
import sys

from interventions.errors import ModarbError
from modarb_tasks import TASKS_PATH

DEFAULT_MODEL = "hf-modarb"
_SUBCOMMANDS = ("run", "ls", "validate")


def register_modarb() -> None:
    """Register `hf-modarb` and put our task folder on every TaskManager's include path."""
    import lm_eval.models  # noqa: F401  (registers the stock models, hf-multimodal among them)
    from lm_eval.tasks import manager

    import interventions.lm  # noqa: F401  (registers hf-modarb)
    from interventions import cache

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
        original(*bound.args, **bound.kwargs)

    __init__._modarb = True
    manager.TaskManager.__init__ = __init__


def with_default_model(argv: list[str]) -> list[str]:
    """Evaluate the bundled organism through `hf-modarb` when no --model is given."""
    is_run = not argv or argv[0] == "run" or argv[0] not in _SUBCOMMANDS
    given = any(a in ("--model", "-M") or a.startswith("--model=") for a in argv)
    if not is_run or given or argv in ([], ["run"]):
        return argv
    return [*argv, "--model", DEFAULT_MODEL]


def run_lm_eval(argv: list[str]) -> None:
    """`modarb eval ARGS` = `lm-eval ARGS` with modarb registered (all flags and subcommands)."""
    from lm_eval.__main__ import cli_evaluate

    register_modarb()
    sys.argv = ["modarb eval", *with_default_model(argv)]
    try:
        cli_evaluate()
    except ValueError as error:
        if str(error).startswith("Tasks not found"):
            raise ModarbError(f"{error}; list the tasks with `modarb eval ls tasks`") from None
        raise
