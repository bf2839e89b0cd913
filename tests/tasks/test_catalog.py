"""The task catalog (modarb_tasks/catalog.py) against the task YAMLs, lm-eval, and its consumers.

The pooled MF ratio is checked against lm-eval's own group number on a real `modarb eval` of the
bundled organism with follow tasks of unequal size (where an unweighted mean would differ).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.leaderboard.helpers import raw_results, results_file

from modarb_tasks import TASKS_PATH
from modarb_tasks.catalog import (FOLLOW_SLOTS, HEADLINE_METRIC, LABELS, MF_RATIO, SCORES, SLOTS, Metric, catalog,
                                  pooled_mf_ratio, read_catalog, read_yaml, suite_task, task_slot)
from modarb_tasks.errors import ModarbError

FIXTURE_RUNS = ("organism_baseline", "organism_block_top5", "organism_amplify_top5", "smoke_qwen2vl")


def test_the_catalog_holds_every_task_and_group_lm_eval_finds_in_the_task_pack():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=TASKS_PATH, include_defaults=False)
    found = catalog()
    assert sorted(found.tasks) == sorted(manager.all_subtasks)
    assert sorted(found.groups) == sorted(manager.all_groups)
    assert len(found.tasks) + len(found.groups) == len(list(Path(TASKS_PATH).glob("*.yaml")))
    for group in found.groups.values():
        assert all(member in found.tasks or member in found.groups for member in group.members), group.name


def _function_names(value):
    """lm-eval's unresolved `!function utils.f` is "<tasks folder>/utils.f"; the catalog keeps "utils.f"."""
    if isinstance(value, dict):
        return {key: _function_names(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_function_names(item) for item in value]
    return value.removeprefix(TASKS_PATH + os.sep) if isinstance(value, str) else value


def test_task_yamls_read_as_lm_eval_reads_them():
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(Path(TASKS_PATH).glob("*.yaml")):
        assert read_yaml(path) == _function_names(load_yaml(path, resolve_func=False)), path.name


def test_every_task_fills_one_slot_of_one_suite():
    found = catalog()
    assert sum(len(tasks) for tasks in found.suites.values()) == len(found.tasks)  # no two tasks share a slot
    assert set(found.suites) == {"mf_*", "mf_*_ll", "mf_*_paraphrase", "mf_*_instruction_after", "mf_*_system_prompt",
                                 "mc2_*", "mc2_paper_*_qwen2_5_vl_7b", "mc2_paper_*_internvl3_8b",
                                 "mc2_paper_*_llava_v1_5_7b"}
    assert list(found.suites["mf_*"]) == list(SLOTS) == list(found.suites["mc2_*"])
    assert all(list(tasks)[:2] == list(FOLLOW_SLOTS) for tasks in found.suites.values())
    assert task_slot("mc2_paper_follow_text_qwen2_5_vl_7b") == ("mc2_paper_*_qwen2_5_vl_7b", "follow_text")
    assert task_slot("mf_follow_image_ll") == ("mf_*_ll", "follow_image")
    assert task_slot("arc_easy") is None and task_slot("modality_following") is None
    assert suite_task("mf_*_ll", "follow_text") == "mf_follow_text_ll" and suite_task("mf_*_ll", "visual_control") is None


def test_each_task_reports_its_headline_metric_and_each_group_pools_it_by_size():
    found = catalog()
    for task in found.tasks.values():
        assert task.headline in task.metrics, task.name
    aggregating = [group for group in found.groups.values() if group.metric is not None]
    assert {group.name for group in found.groups.values()} - {group.name for group in aggregating} == {"modarb"}
    for group in aggregating:
        assert {found.tasks[task].headline for task in found.leaf_tasks(group.name)} == {group.metric}, group.name
        assert group.weight_by_size, group.name  # as pooled_mf_ratio pools
    assert found.leaf_tasks("modarb") == ("mf_follow_image", "mf_follow_text", "mf_visual_control", "mf_language_control")


def test_scores_and_labels_cover_every_slot():
    assert SCORES == (*FOLLOW_SLOTS, MF_RATIO, *SLOTS[2:]) and set(HEADLINE_METRIC) == set(SLOTS)
    assert set(LABELS) == set(SCORES)
    assert [LABELS[s].heading for s in SCORES] == ["Follow image", "Follow text", "MF ratio", "Visual control",
                                                   "Language control"]


def test_the_analyses_task_sets_name_catalog_tasks_in_their_slots():
    from interventions.analysis.data import PAPER_MODELS, DataSource

    for source in (DataSource(), DataSource("mc2"), *(DataSource(f"mc2_paper:{m}") for m in PAPER_MODELS)):
        tasks = source.tasks()
        assert {slot: task_slot(getattr(tasks, slot))[1] for slot in SLOTS} == {slot: slot for slot in SLOTS}, source


@pytest.mark.parametrize("yaml_text, problem", [
    ("task: mf_other\ndataset_kwargs:\n  kind: follow_image\n", "kind 'follow_image'"),
    ("task: mf_follow_both\ndataset_kwargs:\n  kind: both\n", "kind 'both'"),
])
def test_a_task_yaml_off_the_convention_is_a_one_line_error(tmp_path, yaml_text, problem):
    (tmp_path / "bad.yaml").write_text(yaml_text)
    with pytest.raises(ModarbError, match=f"bad.yaml: task .* has dataset_kwargs.{problem}; a modarb task's kind"):
        read_catalog(tmp_path)


def test_pooled_mf_ratio_weights_by_items_and_propagates_stderr():
    pooled = pooled_mf_ratio(Metric(0.5, 0.1, 30), Metric(0.8, 0.2, 10))
    assert pooled.n == 40
    assert pooled.value == pytest.approx((0.5 * 30 + 0.8 * 10) / 40)
    assert pooled.stderr == pytest.approx((3.0**2 + 2.0**2) ** 0.5 / 40)
    assert pooled_mf_ratio(Metric(0.5, None, 30), Metric(0.8, 0.2, 10)).stderr is None
    assert pooled_mf_ratio(Metric(0.5, 0.1, 30), None) is None


def test_pooled_stderr_is_lm_evals_for_tasks_of_equal_size():
    from lm_eval.api.metrics import pooled_sample_stderr

    pooled = pooled_mf_ratio(Metric(0.5, 0.1, 25), Metric(0.8, 0.2, 25))
    assert pooled.stderr == pytest.approx(pooled_sample_stderr([0.1, 0.2], [25, 25]), rel=1e-12)


def test_the_catalog_loads_neither_torch_nor_lm_eval():
    done = subprocess.run([sys.executable, "-c", "import json, sys\nfrom modarb_tasks.catalog import catalog\n"
                           "catalog().suites\nprint(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True, timeout=120)
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if m.split(".")[0] in ("torch", "lm_eval", "interventions", "leaderboard")] == []


def _board_scores(path: Path) -> dict[str, float]:
    from leaderboard.board import board_rows
    from leaderboard.entries import read_results_entry

    (row,) = board_rows({"run": read_results_entry(path)})
    return {key: metric.value for key, metric in row.scores.items() if metric is not None}


@pytest.mark.parametrize("run", FIXTURE_RUNS)
def test_the_evaluator_and_the_board_report_the_same_numbers(run):
    from interventions.analysis.data import SHAPES_TASKS
    from interventions.analysis.evaluation import headline_scores

    raw = raw_results(run)
    scores = headline_scores(raw, SHAPES_TASKS)
    assert scores == _board_scores(results_file(run))
    assert scores[MF_RATIO] == pytest.approx(raw["groups"]["modality_following"]["mf_ratio,none"], abs=1e-12)


@pytest.fixture(scope="module")
def unequal_run(tmp_path_factory) -> dict:
    """`modarb eval` (the command's entry point, in this process) of the organism on modality_following,
    6 follow-image and 12 follow-text items."""
    from interventions.cli import main

    out = tmp_path_factory.mktemp("unequal")
    samples = {"mf_follow_image": list(range(6)), "mf_follow_text": list(range(12))}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", list(sys.argv))  # `modarb eval` hands lm-eval its arguments through sys.argv
        assert main(["eval", "--model", "hf-modarb", "--tasks", "modality_following", "--samples", json.dumps(samples),
                     "--batch_size", "18", "--device", "cpu", "--output_path", str(out)]) == 0
    (path,) = out.rglob("results_*.json")
    return {"path": path, "raw": json.loads(path.read_text())}


def test_pooled_mf_ratio_is_lm_evals_group_number_on_a_real_run(unequal_run):
    raw = unequal_run["raw"]
    tasks = catalog().leaf_tasks("modality_following")
    follow = [Metric(raw["results"][t]["mf_ratio,none"], None, raw["n-samples"][t]["effective"]) for t in tasks]
    assert [metric.n for metric in follow] == [6, 12]
    group = raw["groups"]["modality_following"]["mf_ratio,none"]
    assert pooled_mf_ratio(*follow).value == pytest.approx(group, abs=1e-9)
    unweighted = sum(metric.value for metric in follow) / len(follow)
    assert not math.isclose(unweighted, group, abs_tol=1e-3)  # the run tells the two poolings apart


def test_the_evaluator_and_the_board_agree_on_a_real_run(unequal_run):
    from interventions.analysis.data import SHAPES_TASKS
    from interventions.analysis.evaluation import headline_scores

    scores = headline_scores(unequal_run["raw"], SHAPES_TASKS)
    assert scores == _board_scores(unequal_run["path"])
    assert scores[MF_RATIO] == pytest.approx(unequal_run["raw"]["groups"]["modality_following"]["mf_ratio,none"],
                                             abs=1e-9)
