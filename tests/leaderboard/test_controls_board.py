"""Leaderboard entries and `modarb check` with extra lm-eval controls beside modarb's tasks.

One real `modarb eval` run (two modarb tasks and two of the suite's own control tasks, samples
logged); the other runs are that run with one control's per-item outcomes rewritten, so each test
knows what changed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from interventions import cli
from leaderboard.board import board_rows, build_board
from leaderboard.entries import add_results, read_results_entry

TASKS = Path(__file__).resolve().parent.parent / "fixtures" / "control_tasks"
LIMIT = 4


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, organism_dir) -> Path:
    out = tmp_path_factory.mktemp("controls-eval")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", list(sys.argv))  # `modarb eval` hands lm-eval its arguments through sys.argv
        assert cli.main(["eval", "--tasks", "mf_visual_control,mf_language_control,ctl_context_choice,ctl_image_error",
                         "--include_path", str(TASKS), "--limit", str(LIMIT), "--log_samples",
                         "--output_path", str(out)]) == 0
    return next(out.rglob("results_*.json"))


def _rewritten(results: Path, folder: Path, task: str, outcomes: list[int]) -> Path:
    """A copy of the run in `folder` whose `task` scored `outcomes` per doc (value, stderr and n to match)."""
    shutil.copytree(results.parent, folder)
    copy = folder / results.name
    data = json.loads(copy.read_text())
    metric = next(iter(data["higher_is_better"][task]))
    value = sum(outcomes) / len(outcomes)
    data["results"][task] |= {f"{metric},none": value,
                              f"{metric}_stderr,none": (value * (1 - value) / (len(outcomes) - 1)) ** 0.5}
    data["n-samples"][task]["effective"] = len(outcomes)
    copy.write_text(json.dumps(data))
    samples = copy.with_name(f"samples_{task}_{copy.stem.removeprefix('results_')}.jsonl")
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    samples.write_text("".join(json.dumps(line | {metric: float(x)}) + "\n" for line, x in zip(lines, outcomes)))
    return copy


@pytest.mark.slow
def test_entry_keeps_each_extra_control_by_its_primary_metric(baseline):
    entry = read_results_entry(baseline)
    assert set(entry["tasks"]) == {"mf_visual_control", "mf_language_control"}
    controls = entry["controls"]
    assert {task: (c["metric"], c["higher_is_better"], c["n"]) for task, c in controls.items()} == {
        "ctl_context_choice": ("acc", True, LIMIT), "ctl_image_error": ("error", False, LIMIT)}
    results = json.loads(baseline.read_text())["results"]
    assert controls["ctl_image_error"]["value"] == results["ctl_image_error"]["error,none"]
    assert len(controls["ctl_context_choice"]["items"]["outcomes"]) == LIMIT


def _check(capsys, baseline: Path, results: Path) -> tuple[int, str]:
    status = cli.main(["check", "--baseline", str(baseline), "--results", str(results)])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


@pytest.mark.slow
def test_check_compares_every_task_of_the_baseline_an_error_rate_the_right_way_round(baseline, tmp_path, capsys):
    status, report = _check(capsys, baseline, baseline)
    assert status == 0 and "no regression on 4 tasks" in report
    assert "error (lower is better)" in next(line for line in report.splitlines() if line.startswith("ctl_image_error"))
    all_wrong = _rewritten(baseline, tmp_path / "all-wrong", "ctl_image_error", [1] * LIMIT)
    status, report = _check(capsys, baseline, all_wrong)  # errors rose on every doc: a regression
    assert status == 1 and report.strip().endswith("ctl_image_error"), report
    status, report = _check(capsys, all_wrong, baseline)  # errors fell: an improvement, never a regression
    assert status == 0, report
    row = next(line for line in report.splitlines() if line.startswith("ctl_image_error"))
    assert f"{-1 + json.loads(baseline.read_text())['results']['ctl_image_error']['error,none']:+.3f}" in row


@pytest.mark.slow
def test_check_refuses_results_without_a_control_the_baseline_has(baseline, tmp_path, capsys):
    folder = tmp_path / "fewer"
    shutil.copytree(baseline.parent, folder)
    data = json.loads((folder / baseline.name).read_text())
    del data["results"]["ctl_context_choice"]
    (folder / baseline.name).write_text(json.dumps(data))
    status, report = _check(capsys, baseline, folder / baseline.name)
    assert status == 2 and "lacks tasks the baseline has (ctl_context_choice)" in report


@pytest.mark.slow
def test_board_shows_controls_as_columns_never_mixing_item_counts(baseline, tmp_path):
    fewer = _rewritten(baseline, tmp_path / "fewer", "ctl_image_error", [0, 1, 1])
    entries, board = tmp_path / "entries", tmp_path / "board"
    entries.mkdir()
    add_results([baseline, fewer], entries)
    build_board(entries, board)
    readme = (board / "README.md").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| Model"))
    assert header.endswith(f"| ctl_context_choice (acc ↑, n={LIMIT}) | ctl_image_error (error ↓, n=3) | "
                           f"ctl_image_error (error ↓, n={LIMIT}) |")
    rows = {row.slug: dict(row.controls) for row in board_rows(
        {path.stem: json.loads(path.read_text()) for path in entries.glob("*.json")})}
    assert sorted(len(controls) for controls in rows.values()) == [2, 2]
    assert {metric.n for controls in rows.values() for key, metric in controls.items() if "ctl_image_error" in key} \
        == {3, LIMIT}
