"""The `modarb` command: lm-eval with our tasks and models, and the modarb tools beside it.

Every subcommand module offers `register(subparsers)`; this file only assembles them and turns
bad input (ModarbError and the like) into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from interventions.errors import ModarbError

EXIT_BAD_INPUT = 2
SUBCOMMAND_MODULES = [
    "interventions.organism.cli",
    "interventions.analysis.identify_cli",
    "interventions.analysis.flow_cli",
    "interventions.analysis.reproduce_cli",
    "leaderboard.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modarb",
        description="Modality arbitration in vision-language models: does the model follow the "
        "instruction about which modality to trust, and which attention heads decide it?",
        epilog="Set MODARB_DEBUG=1 to see the full traceback of an error.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.add_parser(
        "eval",
        add_help=False,
        help="lm-eval's own CLI (run, ls, validate; every flag) with modarb's tasks and models; "
        "default model: hf-modarb on the bundled organism",
    )
    tasks_path = subparsers.add_parser("tasks-path", help="print modarb's task folder (for lm_eval --include_path)")
    tasks_path.set_defaults(func=_print_tasks_path)
    for module in _subcommand_modules():
        module.register(subparsers)
    return parser


def _subcommand_modules():
    """Modules with `register(subparsers)`, imported lazily so `modarb eval` starts fast."""
    import importlib

    return [importlib.import_module(name) for name in SUBCOMMAND_MODULES]


def _print_tasks_path(args: argparse.Namespace) -> None:
    from modarb_tasks import TASKS_PATH

    print(TASKS_PATH)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "eval":
            from interventions.harness import run_lm_eval

            run_lm_eval(argv[1:])
            return 0
        if argv == ["tasks-path"]:  # answered before the parser imports every subcommand
            _print_tasks_path(None)
            return 0
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help()
            return 0
        return args.func(args) or 0
    except (ModarbError, FileNotFoundError, ValueError, KeyError) as error:
        if os.environ.get("MODARB_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"modarb: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
