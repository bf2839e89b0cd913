"""`modarb ARGS` run in the test process through the console script's entry point (interventions.cli.main).

It ends as the installed command would: main()'s exit status, argparse's SystemExit, or, for an exception main()
lets through, its traceback on stderr and status 1. Cheaper than a process: nothing is imported again.
"""

from __future__ import annotations

import contextlib
import io
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from interventions.cli import main


@dataclass
class Ended:
    returncode: int
    stdout: str
    stderr: str


def run_here(argv: list[str], cwd: Path) -> Ended:
    """`modarb ARGV` from `cwd`, with MODARB_DEBUG unset, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.chdir(cwd)
        patch.delenv("MODARB_DEBUG", raising=False)
        patch.setattr(sys, "argv", list(sys.argv))  # `modarb eval` hands lm-eval its arguments through sys.argv
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as stop:  # argparse's errors; Python exits 1 after printing a code that is not a number
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except Exception:  # noqa: BLE001 - a bug: the caller's assertions report it, as the process's status would
            traceback.print_exc()
            code = 1
    return Ended(code, out.getvalue(), err.getvalue())
