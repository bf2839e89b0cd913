"""`reproduce --controls`: any lm-eval task as an intervention's control, scored by its own metric.

The task folder tests/fixtures/control_tasks holds the suite's own tasks on generated data: a
text-only multiple choice (acc), an image question (exact_match) and the same question scored by
its error rate (lower is better), plus two that must be refused (data in no cache, no metric).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from interventions import cli
from interventions.analysis.controls import Score, compare
from interventions.analysis.reproduce import ReproduceConfig, reproduce

TASKS = Path(__file__).resolve().parent.parent / "fixtures" / "control_tasks"
CONTROLS = ("ctl_context_choice", "ctl_image_answer", "ctl_image_error")
CONTROLS_LIMIT = 6
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def controlled(tmp_path_factory, organism_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("controls") / "report"
    config = ReproduceConfig(
        out=out, limit=8, batch_size=16, fractions=(0.05,), draws=1, alphas=(2.0,), analysis_items=4,
        amplify_items=4, learned_steps=2, seed=0,
        controls=CONTROLS, include_path=TASKS, controls_limit=CONTROLS_LIMIT,
    )
    return out, reproduce(config)


def _rows(summary: dict) -> dict[str, dict]:
    return {row["run"]: row for row in summary["preserved_ability"]["runs"]}


@pytest.mark.slow
def test_each_control_is_scored_by_its_own_metric_for_the_baseline_and_the_top_block(controlled):
    out, summary = controlled
    block = summary["preserved_ability"]
    assert [(t["task"], t["metric"], t["higher_is_better"]) for t in block["tasks"]] == [
        ("ctl_context_choice", "acc", True), ("ctl_image_answer", "exact_match", True), ("ctl_image_error", "error", False)]
    assert json.loads((out / "summary.json").read_text())["preserved_ability"] == block
    rows = _rows(summary)
    method = summary["identify"]["method"]
    assert list(rows)[:2] == ["baseline", f"block top ({method})"]
    assert {f"block top ({m})" for m in summary["block_top_by_ranking"]} | {"amplify (learned gates)", "amplify top x2"} \
        <= set(rows)
    for name, row in rows.items():
        assert set(row["scores"]) == set(CONTROLS)
        for task, score in row["scores"].items():
            assert score["n"] == CONTROLS_LIMIT and 0.0 <= score["value"] <= 1.0
            assert ("vs_baseline" in score) == (name != "baseline")
    report = (out / "report.md").read_text()
    assert "## Preserved ability (lm-eval controls)" in report
    assert "ctl_context_choice (acc ↑) | ctl_image_answer (exact_match ↑) | ctl_image_error (error ↓) |" in report
    assert rows[f"block top ({method})"]["command"] in report


@pytest.mark.slow
def test_control_numbers_equal_separate_modarb_eval_runs(controlled, monkeypatch):
    """Each recorded command, run as its own `modarb eval` (through the command's entry point), gives the same
    numbers exactly."""
    out, summary = controlled
    rows = _rows(summary)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # `modarb eval` hands lm-eval its arguments through sys.argv
    for name in ("baseline", f"block top ({summary['identify']['method']})"):
        command = rows[name]["command"]
        assert f"--include_path {TASKS}" in command and f"--limit {CONTROLS_LIMIT}" in command
        assert (name == "baseline") == ("spec=" not in command)
        results_dir = out.parent / f"recompute-{len(name)}"
        program, *argv = shlex.split(command)
        assert program == "modarb"
        assert cli.main([*argv, "--output_path", str(results_dir)]) == 0
        results = json.loads(next(results_dir.rglob("results_*.json")).read_text())["results"]
        for task in summary["preserved_ability"]["tasks"]:
            key = f"{task['metric']},{task['filter']}"
            assert results[task["task"]][key] == rows[name]["scores"][task["task"]]["value"], (name, task["task"])


@pytest.mark.slow
def test_paired_interval_comes_from_the_logged_items(controlled):
    """Every fixture metric is 0/1 per doc, so each comparison is paired: b + c discordant docs."""
    _, summary = controlled
    for row in summary["preserved_ability"]["runs"][1:]:
        for score in row["scores"].values():
            compared = score["vs_baseline"]
            assert compared["test"] == "paired"
            assert compared["delta"] == pytest.approx((compared["c"] - compared["b"]) / CONTROLS_LIMIT)
            assert compared["low"] <= compared["delta"] <= compared["high"]


def _items(values: list[int]) -> dict[tuple[str, int], float]:
    return {("task", doc): float(value) for doc, value in enumerate(values)}


def _score(values: list[int]) -> Score:
    return Score(sum(values) / len(values), None, len(values), _items(values))


def test_lower_is_better_is_compared_the_right_way_round():
    """The same fall in a metric is a loss of ability for accuracy and a gain for an error rate."""
    before, after = _score([1] * 30 + [0] * 10), _score([0] * 30 + [0] * 10)
    as_accuracy, as_error = compare(before, after, higher_is_better=True), compare(before, after, higher_is_better=False)
    assert as_accuracy["delta"] == as_error["delta"] == pytest.approx(-0.75)
    assert as_accuracy["high"] < 0 and as_accuracy["change"] == "worse"
    assert as_error["change"] == "better"
    assert compare(before, before, higher_is_better=False)["change"] == "within noise"


def test_unpaired_interval_from_stderrs_when_items_were_not_logged():
    before, after = Score(0.5, 0.05, 100, {}), Score(0.2, 0.04, 100, {})
    compared = compare(before, after, higher_is_better=False)
    assert compared["test"] == "unpaired" and compared["change"] == "better"
    assert compared["high"] - compared["low"] == pytest.approx(2 * 1.96 * (0.05**2 + 0.04**2) ** 0.5)
    unknown = compare(before, Score(0.2, None, 100, {}), higher_is_better=True)
    assert unknown["low"] is None and unknown["change"] == "within noise"


@pytest.fixture
def broken_model(tmp_path, organism_dir) -> Path:
    """The organism with unreadable weights: a run that loads them stops with a traceback."""
    model = tmp_path / "model"
    shutil.copytree(organism_dir, model)
    (model / "model.safetensors").write_bytes(b"not weights")
    return model


@pytest.mark.slow
@pytest.mark.parametrize("controls, expected", [
    ("ctl_context_choise", "unknown task 'ctl_context_choise' (closest lm-eval knows: ctl_context_choice"),
    ("ctl_not_cached", "task 'ctl_not_cached' cannot load its data offline"),
])
def test_bad_control_is_one_line_before_any_weights_load(controls, expected, broken_model, tmp_path, capsys,
                                                        monkeypatch):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "report"
    assert cli.main(["reproduce", "--model", str(broken_model), "--out", str(out), "--controls", controls,
                     "--include_path", str(TASKS)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modarb: error: --controls: ") and expected in lines[0]
    if controls == "ctl_not_cached":
        assert "local HF cache" in lines[0]
    assert not out.exists()


@pytest.mark.slow  # indexes lm-eval's own tasks (seconds)
def test_a_task_without_a_numeric_metric_is_refused(broken_model, tmp_path, capsys, monkeypatch):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    argv = ["reproduce", "--model", str(broken_model), "--out", str(tmp_path / "r"),
            "--controls", "ctl_no_metric", "--include_path", str(TASKS)]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "modarb: error: --controls: task 'ctl_no_metric' has no numeric metric (its metric_list gives bypass); "
        "choose a task that scores its answers"]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, message", [
    (["--include_path", "."], "--include_path applies to --controls tasks"),
    (["--controls-limit", "3"], "--controls-limit applies to --controls tasks"),
    (["--controls", " , "], "--controls ' , ' names no task"),
    (["--controls", "arc_easy", "--controls-limit", "0"], "--controls-limit must be at least 1, not 0"),
])
def test_control_flags_are_checked_first(argv, message, tmp_path, capsys):
    assert cli.main(["reproduce", "--out", str(tmp_path / "r"), *argv]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # indexes lm-eval's own tasks (seconds)
def test_a_group_without_an_aggregate_is_each_of_its_tasks_and_no_task_is_named_twice(monkeypatch):
    from interventions.analysis.controls import resolve
    from modarb_tasks.errors import ModarbError

    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    found = resolve(("ctl_context_choice", "ctl_images"), TASKS, 2)
    assert found.names == ("ctl_context_choice", "ctl_images")
    assert [(c.name, c.metric, c.higher_is_better, c.leaves) for c in found.controls] == [
        ("ctl_context_choice", "acc", True, ("ctl_context_choice",)),
        ("ctl_image_answer", "exact_match", True, ("ctl_image_answer",)),
        ("ctl_image_error", "error", False, ("ctl_image_error",))]
    with pytest.raises(ModarbError, match="task 'ctl_image_error' is named twice"):
        resolve(("ctl_images", "ctl_image_error"), TASKS, 2)
