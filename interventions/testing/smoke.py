"""Smoke entries: every supported VLM family, as a tiny random-init model, run end to end.

For each family: save the tiny model with its offline processor, score it with
`modarb eval --model hf-modarb --tasks modality_following` in a fresh offline process, and add
the results to the leaderboard as a smoke entry (`tiny-<family>`). The numbers mean nothing
(random weights); the entry shows that loading, processing, generation and scoring work for
that architecture. A family that fails is reported with its error, never given an entry.

    python -m interventions.testing.smoke --out /tmp/modarb-smoke [--families llava qwen2_vl] [--limit 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from interventions.families import get_family
from interventions.testing.random_init import TINY_FAMILIES
from interventions.testing.tiny_processors import save_tiny_family
from leaderboard.entries import ENTRIES_DIR

SMOKE_TASKS = "modality_following"
SMOKE_BATCH_SIZE = 8
_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class SmokeRun:
    """What happened to one family: the entry files it added, or the error that stopped it."""

    family: str
    added: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def model_name(family: str) -> str:
    return f"tiny-{family}"


def model_args(family: str) -> str:
    """hf-modarb's model args for the family's saved folder (relative to the run's folder).

    lm-eval's plain-prompt path writes the string of the config's image token id where the
    prompt says "<image>"; Qwen wants its vision start/end around that token and Gemma 3 the
    begin-of-image token its processor expands, so those get `image_string` (as real ones do).
    """
    args = f"pretrained={model_name(family)}"
    if image_string := get_family(family).tokens.image_string:
        args += f",image_string={image_string}"
    return args


def make_smoke_entries(
    out_dir: str | Path,
    families: tuple[str, ...] | list[str] = TINY_FAMILIES,
    limit: int = 8,
    entries_dir: str | Path = ENTRIES_DIR,
    replace: bool = False,
) -> list[SmokeRun]:
    """Save, evaluate and add each family under `out_dir` (models and lm-eval outputs stay there)."""
    unknown = [f for f in families if f not in TINY_FAMILIES]
    if unknown:
        raise ValueError(f"unknown family {unknown[0]!r}; choose from {', '.join(TINY_FAMILIES)}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return [_smoke_one(family, out, limit, Path(entries_dir).resolve(), replace) for family in families]


def _smoke_one(family: str, out: Path, limit: int, entries_dir: Path, replace: bool) -> SmokeRun:
    name = model_name(family)
    save_tiny_family(family, out / name)
    results = out / "results" / name
    shutil.rmtree(results, ignore_errors=True)  # only this run's results may become the entry
    evaluate = [
        "eval", "--model", "hf-modarb", "--model_args", model_args(family), "--tasks", SMOKE_TASKS,
        "--limit", str(limit), "--batch_size", str(SMOKE_BATCH_SIZE), "--output_path", str(results),
    ]
    evaluated = _modarb(evaluate, cwd=out)
    if evaluated.returncode:
        return SmokeRun(family, error=f"modarb eval: {_last_line(evaluated.stderr)}")
    add = ["leaderboard", "add", str(results), "--smoke", "--model-name", name, "--entries", str(entries_dir)]
    added = _modarb([*add, "--replace"] if replace else add, cwd=out)
    if added.returncode:
        return SmokeRun(family, error=f"modarb leaderboard add: {_last_line(added.stderr)}")
    return SmokeRun(family, added=tuple(line.removeprefix("added ") for line in added.stdout.splitlines()
                                        if line.startswith("added ")))


def _modarb(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`modarb ARGV` in a fresh offline process (nothing it does can reach the hub)."""
    return subprocess.run([sys.executable, "-m", "interventions", *argv], cwd=cwd, env={**os.environ, **_OFFLINE},
                          capture_output=True, text=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "failed without a message"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interventions.testing.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the saved models and lm-eval outputs")
    parser.add_argument("--families", nargs="+", default=list(TINY_FAMILIES), choices=TINY_FAMILIES, metavar="FAMILY",
                        help=f"families to run (default: all: {', '.join(TINY_FAMILIES)})")
    parser.add_argument("--limit", type=int, default=8, help="docs per task (default: %(default)s)")
    parser.add_argument("--entries", type=Path, default=ENTRIES_DIR, help="entries folder (default: %(default)s)")
    parser.add_argument("--replace", action="store_true", help="overwrite entries that record the same run")
    args = parser.parse_args(argv)
    runs = make_smoke_entries(args.out, args.families, args.limit, args.entries, args.replace)
    for run in runs:
        print(f"{run.family}: " + (", ".join(run.added) or "no new entry" if run.ok else f"FAILED: {run.error}"))
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
