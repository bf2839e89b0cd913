"""The `modarb` command and plain `lm_eval` as a user runs them: real processes, offline, on the organism.

Every process pays ~10 s of start-up (imports), so the module starts all of them at once in
one fixture and each test reads the runs it is about; the bad-input runs go through the command's
entry point in the test process meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText

from console import run_here
from interventions.testing.random_init import build_tiny_model
from interventions.mechanism.spec import HeadScale, InterventionSpec, model_fingerprint
from modarb_tasks import TASKS_PATH

BIN = Path(sys.executable).parent
LIMIT = 8
FOLLOW = ("modality_following", "mf_follow_image", "mf_follow_text")
LISTED_GROUPS = ("modality_following", "modality_controls", "modarb", "modality_following_mc2", "modality_controls_mc2")
SPEC_NAME = "middle layers blocked"
pytestmark = pytest.mark.slow  # every test reads the module's real `modarb` / `lm_eval` processes

# bad input: run name -> what its one error line must say
BAD_INPUT = {
    "unknown_task": "no_such_task",
    "mc2_missing_images": "MC² image folder not found: /nonexistent",
    "malformed_spec": "not valid JSON (line 1",
    "spec_for_another_model": "but the model is",
    "layer_out_of_range": "layer 99 is out of range: the model has layers 0..",
}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    output_path: Path


def _eval_args(model: str | None, model_args: str, tasks: str, out: Path, *extra: str) -> list[str]:
    """Arguments of an evaluation run; model None leaves --model out (modarb's default model)."""
    chosen = ["--model", model] if model else []
    return [*chosen, "--model_args", model_args, "--tasks", tasks, "--limit", str(LIMIT),
            "--device", "cpu", "--batch_size", "4", "--output_path", str(out), *extra]


def _organism_spec(organism_dir: Path, path: Path) -> Path:
    """A spec made for the organism: every head of its middle layers blocked."""
    model = AutoModelForImageTextToText.from_pretrained(organism_dir)
    fingerprint = model_fingerprint(model)
    middle = range(fingerprint.num_layers // 3, fingerprint.num_layers - fingerprint.num_layers // 3)
    heads = tuple(HeadScale(layer, head, 0.0) for layer in middle for head in range(fingerprint.num_heads))
    return InterventionSpec(model=fingerprint, heads=heads, provenance={"name": SPEC_NAME}).save(path)


@pytest.fixture(scope="module")
def runs(organism_dir, mc2_dir_if_present, tmp_path_factory) -> dict[str, Run]:
    """Every command of this module, run concurrently; name -> its Run (the MC² one where the files are)."""
    root = tmp_path_factory.mktemp("cli")
    organism = f"pretrained={organism_dir}"
    spec = _organism_spec(organism_dir, root / "spec.json")
    malformed = root / "malformed.json"
    malformed.write_text('{"schema": "modarb.intervention/v1", "heads": [')
    foreign = InterventionSpec.from_inline(model=build_tiny_model("llava", "eager")[0], block="L0H0")
    foreign_spec = foreign.save(root / "foreign.json")
    modarb = str(BIN / "modarb")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                        "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MODARB_DEBUG", None)
    # what a user types: lm_eval --include_path "$(modarb tasks-path)"
    tasks_path = subprocess.run([modarb, "tasks-path"], env=env, capture_output=True, text=True)
    runs = {"tasks_path": Run(tasks_path.returncode, tasks_path.stdout, tasks_path.stderr, root)}

    processes = {
        "ls": [modarb, "eval", "ls", "tasks"],
        "validate": [modarb, "eval", "validate", "--tasks", "modarb"],
        "modarb_eval": [modarb, "eval", *_eval_args("hf-multimodal", organism, "modality_following", root / "modarb_eval")],
        "plain_lm_eval": [str(BIN / "lm_eval"), "--include_path", tasks_path.stdout.strip(),
                          *_eval_args("hf-multimodal", organism, "modality_following", root / "plain_lm_eval")],
        "spec_eval": [modarb, "eval", *_eval_args("hf-modarb", f"{organism},spec={spec}", "modality_following",
                                                  root / "spec_eval")],
    }
    # the bad input runs through the command's entry point here, while the processes run (the bad-input
    # catalogue runs each kind of failure as a real process too)
    here = {
        "unknown_task": ["eval", *_eval_args("hf-multimodal", organism, "no_such_task", root / "unknown_task")],
        "malformed_spec": ["eval", *_eval_args("hf-modarb", f"{organism},spec={malformed}", "modality_following",
                                               root / "malformed_spec")],
        "spec_for_another_model": ["eval", *_eval_args(
            "hf-modarb", f"{organism},spec={foreign_spec}", "modality_following", root / "spec_for_another_model")],
        # no --model: hf-modarb on the bundled organism is the default (and here it must load to check the layer)
        "layer_out_of_range": ["eval", *_eval_args(None, "block=L99H0", "modality_following",
                                                   root / "layer_out_of_range")],
    }
    if mc2_dir_if_present is not None:
        benchmark = mc2_dir_if_present / "evaluate_final.json"
        metadata = json.dumps({"mc2_json": str(benchmark), "mc2_images": "/nonexistent"})
        here["mc2_missing_images"] = ["eval", *_eval_args(
            "hf-multimodal", organism, "modality_following_mc2", root / "mc2_missing_images", "--metadata", metadata)]

    started = {name: subprocess.Popen(command, cwd=root, env=env, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for name, command in processes.items()}
    try:
        for name, argv in here.items():
            ended = run_here(argv, root)
            runs[name] = Run(ended.returncode, ended.stdout, ended.stderr, root / name)
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=900)
            runs[name] = Run(process.returncode, stdout, stderr, root / name)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
    return runs


def _results(run: Run) -> dict:
    """The one results JSON lm-eval wrote under the run's --output_path."""
    assert run.returncode == 0, run.stderr[-3000:]
    files = list(run.output_path.rglob("results_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_ls_lists_our_groups_and_validate_accepts_modarb(runs):
    assert runs["ls"].returncode == 0, runs["ls"].stderr[-3000:]
    listed = {cell.strip() for line in runs["ls"].stdout.splitlines() for cell in line.split("|")[1:2]}
    assert set(LISTED_GROUPS) <= listed
    validate = runs["validate"]
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert "All tasks found and valid" in validate.stdout


def test_modarb_eval_writes_mf_ratio_for_the_group_and_both_subtasks(runs):
    results = _results(runs["modarb_eval"])
    assert results["config"]["model"] == "hf-multimodal"
    for name in FOLLOW:
        assert 0.0 <= results["results"][name]["mf_ratio,none"] <= 1.0, name
    for name in FOLLOW[1:]:
        assert results["n-samples"][name]["effective"] == LIMIT
    assert results["results"]["modality_following"]["mf_ratio,none"] == pytest.approx(
        sum(results["results"][name]["mf_ratio,none"] for name in FOLLOW[1:]) / 2)


def test_plain_lm_eval_with_our_tasks_path_gives_the_same_numbers(runs):
    ours, plain = _results(runs["modarb_eval"]), _results(runs["plain_lm_eval"])
    assert plain["config"]["model"] == "hf-multimodal" and plain["n-samples"] == ours["n-samples"]
    for name in FOLLOW:
        # json.dumps compares NaN (mf_conditional when nothing matched) as equal to itself
        assert json.dumps(plain["results"][name], sort_keys=True) == json.dumps(ours["results"][name], sort_keys=True)


def test_tasks_path_prints_the_task_folder(runs):
    assert runs["tasks_path"].returncode == 0, runs["tasks_path"].stderr
    assert runs["tasks_path"].stdout == TASKS_PATH + "\n" and (Path(TASKS_PATH) / "modality_following.yaml").is_file()


def test_hf_modarb_records_the_spec_identity_in_the_results_config(runs):
    results = _results(runs["spec_eval"])
    spec_file = runs["spec_eval"].output_path.parent / "spec.json"
    spec = InterventionSpec.load(spec_file)
    config = results["config"]
    assert config["model"] == "hf-modarb"
    assert config["modarb_spec_identity"] == spec.identity()
    assert config["modarb_spec_name"] == SPEC_NAME
    assert config["modarb_spec"] == spec.to_dict()
    assert 0.0 <= results["results"]["modality_following"]["mf_ratio,none"] <= 1.0


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_one_line_and_writes_no_results(name, runs, request):
    if name not in runs:
        request.getfixturevalue("mc2_dir")  # skips, saying where it looked
    run = runs[name]
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "modarb: error" in line]
    assert errors == [lines[-1]], lines[-5:]
    assert lines[-1].startswith("modarb: error: ") and BAD_INPUT[name] in lines[-1], lines[-1]
    assert not list(run.output_path.rglob("*.json")) and not list(run.output_path.rglob("*.jsonl"))
