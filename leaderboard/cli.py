"""`modarb leaderboard add|build` and `modarb check`, registered into the `modarb` CLI.

Handlers return the exit status; bad input raises ModarbError, which the `modarb` CLI turns
into `modarb: error: <message>` and status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modarb_tasks.errors import ModarbError
from modarb_tasks.files import check_writable
from leaderboard.board import BOARD_DIR, build_board
from leaderboard.check import DEFAULT_TOLERANCE, DEFAULT_Z, check_setting, compare, format_report
from leaderboard.entries import ENTRIES_DIR, plan_add

EXIT_REGRESSION = 1
EXIT_INTERRUPTED = 130


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `leaderboard` (add, build) and `check` subcommands."""
    board = subparsers.add_parser(
        "leaderboard", help="add lm-eval results to the leaderboard and build its pages",
        description="Keep modarb's leaderboard: normalised entries (one JSON per lm-eval run) and "
        "the README.md / index.html built from them.")
    actions = board.add_subparsers(dest="leaderboard_command", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add", help="turn lm-eval results into leaderboard entries",
        description="Read the results_*.json written by `lm_eval --output_path` (a file, or every one "
        "below a folder) and store one normalised entry per run. A run already on the board (same "
        "file, or same model, intervention, date and metrics) is refused unless --replace is given.")
    add.add_argument("paths", nargs="+", type=Path, metavar="RESULTS",
                     help="lm-eval results file or output folder")
    add.add_argument("--smoke", action="store_true",
                     help="label as a smoke entry (tiny random-init model: shows the family runs, not a result)")
    add.add_argument("--replace", action="store_true", help="overwrite an entry that records the same run")
    add.add_argument("--model-name", help="name to show and group by instead of the pretrained= model arg")
    add.add_argument("--entries", type=Path, default=ENTRIES_DIR,
                     help="entries folder (default: %(default)s)")
    add.set_defaults(func=_add)

    build = actions.add_parser(
        "build", help="render README.md, index.html and plots from the entries",
        description="Render the board from all entries: README.md (Markdown tables), index.html "
        "(self-contained page, sortable columns, plots) and plots/*.png. Same entries, same bytes.")
    build.add_argument("--entries", type=Path, default=ENTRIES_DIR, help="entries folder (default: %(default)s)")
    build.add_argument("--out", type=Path, default=BOARD_DIR,
                       help="output folder (default: %(default)s); a README.md or index.html there that modarb did "
                       "not build is never overwritten")
    build.add_argument("--allow-empty", action="store_true",
                       help="build an empty board when the entries folder holds no entry (refused otherwise)")
    build.set_defaults(func=_build)

    check = subparsers.add_parser(
        "check", help="fail (exit 1) when new results regress against a baseline",
        description="Compare new lm-eval results with a baseline task by task (follow image / text: "
        "mf_ratio; visual / language control: acc; any other lm-eval task the baseline has: its own primary metric, "
        "in its direction). Paired when both kept per-item outcomes (--log_samples) "
        "on the same docs: a task regresses when the paired interval of new - baseline lies below -tolerance; "
        "otherwise when new < baseline - tolerance - z*sqrt(se_baseline^2 + se_new^2). Both must score the same items per task (same --limit). "
        "Exit 0: no regression; 1: regression; 2: bad input (runs on different items included).")
    check.add_argument("--baseline", type=Path, required=True,
                       help="leaderboard entry JSON, or lm-eval results file / output folder")
    check.add_argument("--results", type=Path, required=True, help="new lm-eval results file or output folder")
    check.add_argument("--tolerance", type=_setting("tolerance"), default=DEFAULT_TOLERANCE,
                       help="accepted drop on top of the noise (default: %(default)s)")
    check.add_argument("--z", type=_setting("z"), default=DEFAULT_Z,
                       help="standard errors of the difference that noise may explain (default: %(default)s)")
    check.set_defaults(func=_check)


def _setting(name: str):
    """An argparse type: a finite number ≥ 0 (argparse reports a ValueError's message in one line)."""

    def parse(text: str) -> float:
        try:
            return check_setting(name, float(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error) if isinstance(error, ModarbError)
                                             else f"--{name} {text!r} is not a number") from None

    parse.__name__ = name
    return parse


def _add(args: argparse.Namespace) -> int:
    check_writable(args.entries, "--entries")
    kind = "smoke" if args.smoke else "result"
    plan = plan_add(args.paths, args.entries, kind=kind, replace=args.replace, model_name=args.model_name)
    for results_file, slug in plan.skipped:
        print(f"skipped {results_file}: already on the leaderboard as {slug}.json (identical entry)")
    added = 0
    try:
        for written in plan.write():
            added += 1
            print(f"added {written}")
    except KeyboardInterrupt:
        print(f"\nmodarb: interrupted; {added} of {len(plan.new)} entries were added and are whole; run the same "
              "command again to add the rest (entries already added are skipped)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _build(args: argparse.Namespace) -> int:
    if not args.entries.is_dir():
        what = "is a file" if args.entries.exists() else "does not exist"
        raise ModarbError(f"--entries {args.entries} {what}; give the folder of leaderboard entries "
                          f"(default: {ENTRIES_DIR})")
    for written in build_board(args.entries, args.out, allow_empty=args.allow_empty):
        print(f"wrote {written}")
    return 0


def _check(args: argparse.Namespace) -> int:
    comparisons = compare(args.baseline, args.results, args.tolerance, args.z)
    print(format_report(comparisons, args.tolerance, args.z))
    return EXIT_REGRESSION if any(c.regressed for c in comparisons) else 0
