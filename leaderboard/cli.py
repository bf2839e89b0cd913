"""`modarb leaderboard add|build` and `modarb check`, registered into the `modarb` CLI.

Handlers return the exit status; bad input raises ModarbError, which the `modarb` CLI turns
into `modarb: error: <message>` and status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modarb_tasks.errors import ModarbError
from modarb_tasks.files import check_writable
from leaderboard.board import BOARD_DIR, build_board
from leaderboard.check import DEFAULT_TOLERANCE, DEFAULT_Z, compare, format_report
from leaderboard.entries import ENTRIES_DIR, add_results

EXIT_REGRESSION = 1


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
    build.add_argument("--out", type=Path, default=BOARD_DIR, help="output folder (default: %(default)s)")
    build.set_defaults(func=_build)

    check = subparsers.add_parser(
        "check", help="fail (exit 1) when new results regress against a baseline",
        description="Compare new lm-eval results with a baseline task by task (follow image / text: "
        "mf_ratio; visual / language control: acc). Paired when both kept per-item outcomes (--log_samples) "
        "on the same docs: a task regresses when the paired interval of new - baseline lies below -tolerance; "
        "otherwise when new < baseline - tolerance - z*sqrt(se_baseline^2 + se_new^2). Both must score the same items per task (same --limit). "
        "Exit 0: no regression; 1: regression; 2: bad input (runs on different items included).")
    check.add_argument("--baseline", type=Path, required=True,
                       help="leaderboard entry JSON, or lm-eval results file / output folder")
    check.add_argument("--results", type=Path, required=True, help="new lm-eval results file or output folder")
    check.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                       help="accepted drop on top of the noise (default: %(default)s)")
    check.add_argument("--z", type=float, default=DEFAULT_Z,
                       help="standard errors of the difference that noise may explain (default: %(default)s)")
    check.set_defaults(func=_check)


def _add(args: argparse.Namespace) -> int:
    check_writable(args.entries, "--entries")
    kind = "smoke" if args.smoke else "result"
    for written in add_results(args.paths, args.entries, kind=kind, replace=args.replace,
                               model_name=args.model_name):
        print(f"added {written}")
    return 0


def _build(args: argparse.Namespace) -> int:
    check_writable(args.out)
    if args.entries.exists() and not args.entries.is_dir():
        raise ModarbError(f"--entries {args.entries} is a file; give the folder of leaderboard entries")
    for written in build_board(args.entries, args.out):
        print(f"wrote {written}")
    return 0


def _check(args: argparse.Namespace) -> int:
    comparisons = compare(args.baseline, args.results, args.tolerance, args.z)
    print(format_report(comparisons, args.tolerance, args.z))
    return EXIT_REGRESSION if any(c.regressed for c in comparisons) else 0
