"""`modarb check` on results files written by lm-eval itself (tests/fixtures/leaderboard)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fixtures.leaderboard.helpers import raw_results, results_file, run_modarb

from leaderboard.entries import Metric, add_results
from leaderboard.check import regression_floor


def _status_by_task(out: str) -> dict[str, str]:
    rows = out.split("\n\n")[0].splitlines()[1:]
    return {row.split()[0]: row.split()[-1] for row in rows}


def test_results_pass_against_themselves(monkeypatch, capsys):
    baseline = results_file("organism_baseline")
    status, out, err = run_modarb(monkeypatch, capsys, "check", "--baseline", baseline, "--results", baseline)
    assert (status, err) == (0, "")
    assert _status_by_task(out) == {"mf_follow_image": "ok", "mf_follow_text": "ok",
                                    "mf_visual_control": "ok", "mf_language_control": "ok"}
    assert out.endswith("\nno regression on 4 tasks (tolerance 0.02, z 1.96)\n")


def test_blocked_heads_fail_on_following_and_keep_the_controls(monkeypatch, capsys, tmp_path):
    entry = add_results([results_file("organism_baseline")], tmp_path / "entries")[0]  # an entry works as baseline
    status, out, _ = run_modarb(monkeypatch, capsys, "check", "--baseline", entry,
                                "--results", results_file("organism_block_top5").parent.parent)
    assert status == 1
    assert _status_by_task(out) == {"mf_follow_image": "REGRESSION", "mf_follow_text": "REGRESSION",
                                    "mf_visual_control": "ok", "mf_language_control": "ok"}
    assert out.endswith("\nREGRESSION on 2 of 4 tasks (tolerance 0.02, z 1.96): mf_follow_image, mf_follow_text\n")
    image_row = next(line for line in out.splitlines() if line.startswith("mf_follow_image"))
    assert image_row.split()[:9] == ["mf_follow_image", "mf_ratio", "0.975", "±", "0.025", "0.450", "±", "0.080",
                                     "-0.525"]

    status, out, _ = run_modarb(monkeypatch, capsys, "check", "--baseline", entry, "--tolerance", "0.6",
                                "--results", results_file("organism_block_top5"))
    assert status == 0 and "no regression on 4 tasks (tolerance 0.6, z 1.96)" in out


def test_regression_floor_formula():
    floor = regression_floor(Metric(0.8, 0.03, 100), Metric(0.7, 0.04, 100), tolerance=0.02, z=1.96)
    assert floor == pytest.approx(0.8 - 0.02 - 1.96 * 0.05)
    assert regression_floor(Metric(0.8, None, 100), Metric(0.7, None, 100), 0.02, 1.96) == pytest.approx(0.78)


@pytest.mark.parametrize("offset, expected_status", [(+0.001, 0), (-0.001, 1)])
def test_the_threshold_is_where_the_formula_puts_it(tmp_path, monkeypatch, capsys, offset, expected_status):
    raw = raw_results("organism_baseline")
    scores = raw["results"]["mf_follow_text"]
    se = scores["mf_ratio_stderr,none"]
    scores["mf_ratio,none"] = scores["mf_ratio,none"] - 0.02 - 1.96 * math.sqrt(2) * se + offset
    new = tmp_path / "results_new.json"
    new.write_text(json.dumps(raw))
    status, out, _ = run_modarb(monkeypatch, capsys, "check", "--baseline", results_file("organism_baseline"),
                                "--results", new)
    assert status == expected_status
    assert _status_by_task(out)["mf_follow_text"] == ("ok" if expected_status == 0 else "REGRESSION")


def test_missing_tasks_and_bad_files_exit_2(tmp_path: Path, monkeypatch, capsys):
    smoke = results_file("smoke_qwen2vl")
    status, out, err = run_modarb(monkeypatch, capsys, "check", "--baseline", results_file("organism_baseline"),
                                  "--results", smoke)
    assert (status, out) == (2, "")
    assert err == (f"modarb: error: {smoke}: lacks tasks the baseline has (mf_language_control, mf_visual_control); "
                   "evaluate the new model on the same --tasks\n")

    bad = tmp_path / "results_bad.json"
    bad.write_text('{"results": ')
    status, _, err = run_modarb(monkeypatch, capsys, "check", "--baseline", bad, "--results", smoke)
    assert status == 2 and err.startswith(f"modarb: error: {bad}: malformed JSON") and err.count("\n") == 1


def test_runs_on_different_items_are_not_compared(tmp_path: Path, monkeypatch, capsys):
    raw = raw_results("organism_baseline")
    raw["n-samples"]["mf_follow_text"]["effective"] = 8
    fewer = tmp_path / "results_limit8.json"
    fewer.write_text(json.dumps(raw))
    status, out, err = run_modarb(monkeypatch, capsys, "check", "--baseline", results_file("organism_baseline"),
                                  "--results", fewer)
    assert (status, out) == (2, "")
    assert err == ("modarb: error: task mf_follow_text: the baseline scored 40 items, the new results 8; "
                   "compare runs on the same items (the same --limit and --metadata)\n")
