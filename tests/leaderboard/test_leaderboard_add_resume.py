"""An interrupted `modarb leaderboard add` says what it kept, and the same command run again finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leaderboard.entries import read_entry

BIN = Path(sys.executable).parent
BASELINE = next((Path(__file__).resolve().parents[1] / "fixtures" / "leaderboard" / "organism_baseline").rglob("results_*.json"))
RUNS = 1000  # enough that the Ctrl-C lands while entries are being written


def _many_runs(folder: Path) -> None:
    """RUNS results files of distinct runs (the same scores on different dates)."""
    raw = json.loads(BASELINE.read_text())
    for index in range(RUNS):
        raw["date"] += 3600
        run = folder / f"run{index:04d}"
        run.mkdir(parents=True)
        (run / "results_run.json").write_text(json.dumps(raw))


def _add(results: Path, entries: Path, **popen) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([str(BIN / "modarb"), "leaderboard", "add", str(results), "--entries", str(entries)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_an_interrupted_add_keeps_whole_entries_and_the_same_add_finishes_it(tmp_path):
    results, entries = tmp_path / "results", tmp_path / "entries"
    _many_runs(results)
    sigint = signal.signal(signal.SIGINT, signal.default_int_handler)  # the child starts with a terminal's Ctrl-C
    try:
        process = _add(results, entries)
        deadline = time.monotonic() + 300
        while not any(entries.glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        signal.signal(signal.SIGINT, sigint)
    kept = sorted(entries.glob("*.json"))
    assert process.returncode == 130, err[-2000:]
    assert 0 < len(kept) < RUNS  # interrupted while writing
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"modarb: interrupted; {len(kept)} of {RUNS} entries were added and are whole; run the same command again "
        "to add the rest (entries already added are skipped)")
    assert out.count("added ") == len(kept)
    for path in kept:
        read_entry(path)  # each kept entry is whole
    assert not list(entries.glob(".*.tmp"))

    again = _add(results, entries)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert out.count("skipped ") == len(kept) and out.count("added ") == RUNS - len(kept)
    assert len(list(entries.glob("*.json"))) == RUNS
