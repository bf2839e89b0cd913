"""The `modarb` command: lm-eval with our tasks and models, and the modarb tools beside it.

Every subcommand module offers `register(subparsers)`; this file only assembles them and turns
bad input (ModarbError, raised where user input is read, and argparse's errors) and a full disk into
one line and exit status 2, and Ctrl-C into one line and status 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from interventions.versions import warn_untested_versions
from modarb_tasks.errors import ModarbError
from modarb_tasks.files import disk_full_message, is_disk_full

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
SUBCOMMAND_MODULES = [
    "interventions.cli.organism",
    "interventions.cli.identify",
    "interventions.cli.flow",
    "interventions.cli.reproduce",
    "interventions.cli.steer",
    "leaderboard.cli",
]
# command -> the module that registers it: `modarb <command> ...` imports only that one, so a bad
# flag of a light command (leaderboard, check, organism, flow) is answered without importing lm-eval.
COMMAND_MODULES = {
    "organism": "interventions.cli.organism",
    "identify": "interventions.cli.identify",
    "flow": "interventions.cli.flow",
    "reproduce": "interventions.cli.reproduce",
    "steer": "interventions.cli.steer",
    "leaderboard": "leaderboard.cli",
    "check": "leaderboard.cli",
}


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line that names the (sub)command and where its help is.
    Subcommand parsers are made with the same class, so `modarb identify --bad` names identify."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")

    def parse_args(self, args=None, namespace=None):
        """Unknown options are reported by the subcommand they were given to, not the top level."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            _chosen_subparser(self, parsed).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _chosen_subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand parser that `args` went through (`parser` itself if none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_subparser(action.choices[getattr(args, action.dest)], args)
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `modarb` parser; with `command`, only the subcommand module that registers it is imported."""
    parser = Parser(
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
    for module in _subcommand_modules(command):
        module.register(subparsers)
    return parser


def _subcommand_modules(command: str | None = None):
    """Modules with `register(subparsers)`, imported lazily so `modarb eval` starts fast."""
    import importlib

    names = [COMMAND_MODULES[command]] if COMMAND_MODULES.get(command) in SUBCOMMAND_MODULES else SUBCOMMAND_MODULES
    return [importlib.import_module(name) for name in names]


def _print_tasks_path(args: argparse.Namespace) -> None:
    from modarb_tasks import TASKS_PATH

    print(TASKS_PATH)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warn_untested_versions()
    try:
        if argv and argv[0] == "eval":
            from interventions.model.harness import run_lm_eval

            run_lm_eval(argv[1:])
            return 0
        if argv == ["tasks-path"]:  # answered before the parser imports every subcommand
            _print_tasks_path(None)
            return 0
        parser = build_parser(argv[0] if argv else None)
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help()
            return 0
        return args.func(args) or 0
    except ModarbError as error:
        if os.environ.get("MODARB_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"modarb: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        if not is_disk_full(error) or os.environ.get("MODARB_DEBUG"):
            raise  # any other OS error may be a bug: keep its traceback
        where = Path(error.filename) if error.filename else Path.cwd()
        where = where if where.is_dir() else where.parent
        print(f"modarb: error: {disk_full_message(where)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if os.environ.get("MODARB_DEBUG"):
            raise
        _close_progress_bars()
        print("\nmodarb: interrupted; unfinished output was discarded, earlier output is as it was", file=sys.stderr)
        return EXIT_INTERRUPTED


def _close_progress_bars() -> None:
    """Close the bars a Ctrl-C left open now, so they do not print after the last line."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


if __name__ == "__main__":
    sys.exit(main())
