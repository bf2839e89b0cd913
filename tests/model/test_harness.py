"""The run guards `modarb eval` adds to lm-eval: the model behind --use_cache is the one checked, and
JSON-looking arguments that do not parse are one line."""

from __future__ import annotations

import pytest
from lm_eval.tasks import TaskManager, get_task_dict

from interventions.model.cache import ScopedCachingLM
from interventions.model.harness import check_json_arguments, check_tasks
from interventions.model.lm import ModarbVLM
from modarb_tasks import TASKS_PATH
from modarb_tasks.errors import ModarbError


@pytest.fixture(scope="module")
def task_dicts():
    manager = TaskManager(include_path=TASKS_PATH, include_defaults=False)
    return {name: get_task_dict([name], manager) for name in ("modarb", "modality_controls")}


def test_the_mixed_group_runs_under_the_request_cache(organism_dir, task_dicts, tmp_path):
    """hf-modarb routes image and text-only requests; wrapped by --use_cache it still does, so the check
    looks through the wrapper instead of refusing the group as it would for stock hf-multimodal."""
    cached = ScopedCachingLM(ModarbVLM(pretrained=str(organism_dir), device="cpu", batch_size=2),
                             str(tmp_path / "cache" / "c.db"))
    assert cached.lm.spec is None and check_tasks(cached, task_dicts["modarb"]) is None


def test_the_spec_check_runs_under_the_request_cache(organism_dir, task_dicts, tmp_path):
    lm = ModarbVLM(pretrained=str(organism_dir), device="cpu", batch_size=2, block="L3H1", positions="image")
    cached = ScopedCachingLM(lm, str(tmp_path / "cache" / "c.db"))
    for model in (lm, cached):
        with pytest.raises(ModarbError, match="task mf_language_control has no image"):
            check_tasks(model, task_dicts["modality_controls"])


@pytest.mark.parametrize("argv, problem", [
    (["--metadata", '{"shapes_n": 8'], "--metadata '{\"shapes_n\": 8' is not valid JSON"),
    (['--model_args={"block": "L3H1"'], "--model_args '{\"block\": \"L3H1\"' is not valid JSON"),
    (["--gen_kwargs", "{oops}"], "--gen_kwargs '{oops}' is not valid JSON"),
])
def test_malformed_json_arguments_are_one_line(argv, problem):
    with pytest.raises(ModarbError, match="^" + problem.replace("{", r"\{").replace("}", r"\}")):
        check_json_arguments(["--tasks", "modarb", *argv])


def test_well_formed_and_key_value_arguments_pass():
    assert check_json_arguments(["--metadata", '{"shapes_n": 8}', "--model_args", "block=L3H1,alpha=2",
                                 "--gen_kwargs", "max_gen_toks=4"]) is None


def test_a_spec_at_the_answer_positions_stops_before_a_text_only_loglikelihood_task(organism_dir):
    """hf-modarb cannot find the answer positions in lm-eval's text-only loglikelihood loop: refused before any
    request (not after the other tasks ran), naming the task; generation and image tasks still run."""
    from pathlib import Path

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "control_tasks"
    manager = TaskManager(include_path=[TASKS_PATH, str(fixtures)], include_defaults=False)
    lm = ModarbVLM(pretrained=str(organism_dir), device="cpu", batch_size=2, block="L3H1", positions="last")
    check_tasks(lm, get_task_dict(["modality_following", "ctl_image_answer"], manager))  # no error
    with pytest.raises(ModarbError, match="acts at the answer positions .* task ctl_context_choice is text-only "
                                          "loglikelihood; use positions=all"):
        check_tasks(lm, get_task_dict(["ctl_context_choice"], manager))
