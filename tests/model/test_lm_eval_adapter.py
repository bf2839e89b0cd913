"""The lm-eval adapter: its replacements live for one run only, and a changed lm-eval stops with one line."""

from __future__ import annotations

import ast
import inspect
import json
import re
from importlib import metadata
from pathlib import Path

import pytest

from interventions.cli import main
from interventions.model import lm_eval_adapter
from interventions.model.harness import modarb_task_names
from interventions.model.lm_eval_adapter import (EXPECTED, LM_EVAL_VERSION, EvalRun, LmEvalChanged, check_lm_eval,
                                                 eval_run, evaluation_run, patched)
from modarb_tasks import TASKS_PATH

# An arc_easy-shaped item set on disk: lm-eval's own arc_easy (its prompt, choices and metrics) scores it offline.
ARC_ITEMS = [
    {"id": "q1", "question": "Which is a colour?", "choices": {"text": ["red", "seven"], "label": ["A", "B"]},
     "answerKey": "A"},
    {"id": "q2", "question": "Which is a number?", "choices": {"text": ["blue", "three"], "label": ["A", "B"]},
     "answerKey": "B"},
]


def _probe_tasks(folder: Path) -> Path:
    """A task folder that is not modarb's: a group running lm-eval's built-in arc_easy on local items. Its
    task exists only through lm-eval's own index (no index, no arc_easy config: the run cannot build it)."""
    folder.mkdir()
    data = folder / "arc_items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ARC_ITEMS), encoding="utf-8")
    overrides = {"task": "arc_easy", "dataset_path": "json", "dataset_name": None,
                 "dataset_kwargs": {"data_files": {"test": str(data)}}, "training_split": None,
                 "validation_split": None, "test_split": "test"}
    group = {"group": "adapter_probe", "task": [overrides],
             "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean"}]}
    (folder / "adapter_probe.yaml").write_text(json.dumps(group), encoding="utf-8")  # JSON is YAML
    return folder


def _results(output_path: Path) -> dict:
    (found,) = output_path.rglob("results_*.json")
    return json.loads(found.read_text(encoding="utf-8"))


def _originals() -> dict:
    """What each replaced lm-eval attribute is right now, as stored on its owner."""
    return {target: inspect.getattr_static(*lm_eval_adapter._owner(target)) for target in EXPECTED}


@pytest.mark.slow  # the second run indexes lm-eval's ~14k task YAMLs
@pytest.mark.usefixtures("organism_dir")
def test_two_eval_runs_in_one_process_the_second_sees_lm_evals_own_tasks(tmp_path, capsys):
    """A run that asks only for modarb's tasks skips lm-eval's index; the next run in the same process, asking
    for a built-in task, still finds it, and lm-eval is left as installed after each run."""
    installed = _originals()
    common = ["--limit", "2", "--device", "cpu", "--batch_size", "2"]
    assert main(["eval", "--tasks", "mf_language_control", *common, "--output_path", str(tmp_path / "first")]) == 0
    assert _originals() == installed
    first = _results(tmp_path / "first")
    assert list(first["results"]) == ["mf_language_control"]

    probe = _probe_tasks(tmp_path / "probe_tasks")
    assert main(["eval", "--include_path", str(probe), "--tasks", "adapter_probe", *common,
                 "--output_path", str(tmp_path / "second")]) == 0
    assert _originals() == installed
    second = _results(tmp_path / "second")
    assert second["n-samples"]["arc_easy"] == {"original": 2, "effective": 2}
    assert 0.0 <= second["results"]["arc_easy"]["acc,none"] <= 1.0
    assert second["configs"]["arc_easy"]["doc_to_text"] == "Question: {{question}}\nAnswer:"  # lm-eval's own arc_easy
    assert "modarb: error" not in capsys.readouterr().err


def test_each_run_starts_from_its_own_state_and_leaves_lm_eval_as_installed():
    """A run asking only for modarb's tasks indexes only modarb's folder and names a results folder without
    pretrained= after the organism; the next run, asking for another task, indexes lm-eval's own tasks again,
    and outside a run lm-eval behaves as installed."""
    from argparse import Namespace

    from lm_eval.config.evaluate_config import EvaluatorConfig
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lm_eval.tasks import TaskManager

    installed = _originals()

    def run(tasks: str) -> EvalRun:
        state = EvalRun(include_path=TASKS_PATH, own_tasks=modarb_task_names(), default_model_name="the_organism",
                        check_config=lambda cfg, namespace: None, check_tasks=lambda lm, task_dict: None)
        with eval_run(state):
            EvaluatorConfig.from_cli(Namespace(tasks=tasks, model="hf"))
            if not state.include_defaults:  # (lm-eval's own index takes half a minute to build)
                indexed = TaskManager().all_tasks
                assert "mf_language_control" in indexed and "arc_easy" not in indexed
            assert GeneralConfigTracker._get_model_name("device=cpu") == "the_organism"
            assert GeneralConfigTracker._get_model_name("pretrained=/models/x,device=cpu") == "/models/x"
        return state

    assert run("modality_controls,mf_language_control").include_defaults is False
    assert run("modality_controls,arc_easy").include_defaults is True  # not carried over from the first run
    assert run("modality_controls").include_defaults is False
    assert _originals() == installed
    assert GeneralConfigTracker._get_model_name("device=cpu") is None  # lm-eval's own answer again


def test_a_replacement_is_undone_when_the_run_fails():
    from lm_eval.api import model

    installed = _originals()
    with pytest.raises(RuntimeError), patched({lm_eval_adapter.CACHING_LM: lambda original: object}):
        assert model.CachingLM is object
        raise RuntimeError("the run failed")
    assert _originals() == installed


def test_an_in_process_run_has_the_scoped_cache_and_no_task_bars_only_inside():
    from lm_eval.api import model, task

    from interventions.model.cache import ScopedCachingLM

    installed = _originals()
    with evaluation_run(quiet=True):
        assert model.CachingLM is ScopedCachingLM
        assert task.tqdm(range(3)).disable
    assert _originals() == installed and not task.tqdm(range(3), disable=False).disable
    with evaluation_run():
        assert model.CachingLM is ScopedCachingLM and task.tqdm is installed[lm_eval_adapter.TASK_BAR]
    assert _originals() == installed


def test_the_installed_lm_eval_is_the_one_the_adapter_expects():
    """pyproject pins the release the adapter was written against, and every replaced callable matches it."""
    assert metadata.version("lm-eval") == lm_eval_adapter.LM_EVAL_VERSION
    assert check_lm_eval() is None and len(lm_eval_adapter.EXPECTED) == 7


def test_a_changed_upstream_signature_stops_with_one_line_naming_the_version(monkeypatch):
    """lm-eval renaming a parameter a replacement relies on (here TaskManager's include_path) is caught before
    anything is replaced, in one line naming the installed lm-eval and the version the adapter expects."""
    from lm_eval.tasks.manager import TaskManager

    installed = _originals()

    def changed_init(self, verbosity=None, include_paths=None, include_defaults=True, metadata=None):
        raise AssertionError("never called")

    monkeypatch.setattr(TaskManager, "__init__", changed_init)
    state = EvalRun(include_path="x", own_tasks=set(), default_model_name="organism",
                    check_config=lambda cfg, namespace: None, check_tasks=lambda lm, task_dict: None)
    with pytest.raises(LmEvalChanged) as raised, eval_run(state):
        pass
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"lm-eval {metadata.version('lm-eval')} changed TaskManager.__init__: it takes (self, "
                              "verbosity=None, include_paths=None, include_defaults=True, metadata=None), while "
                              f"lm-eval {LM_EVAL_VERSION}")
    assert message.endswith(f"install lm-eval=={LM_EVAL_VERSION}")
    assert TaskManager.__init__ is changed_init  # nothing was replaced
    monkeypatch.undo()
    assert _originals() == installed


@pytest.mark.parametrize("target", sorted(EXPECTED))
def test_every_replaced_callable_is_checked(target, monkeypatch):
    """Any callable the adapter replaces, changed upstream, is named before anything is replaced."""
    def changed(*args, added=None):
        raise AssertionError("never called")

    monkeypatch.setattr(*lm_eval_adapter._owner(target), changed)
    name = target.partition(":")[2]
    with pytest.raises(LmEvalChanged, match=rf"changed {re.escape(name)}: it takes \(\*args, added=None\), while"):
        check_lm_eval()


def test_a_removed_upstream_callable_is_named(monkeypatch):
    from lm_eval.api import task

    monkeypatch.delattr(task, "tqdm")
    gone = rf"changed tqdm: it no longer exists, while lm-eval {re.escape(LM_EVAL_VERSION)}"
    with pytest.raises(LmEvalChanged, match=gone):
        check_lm_eval()


def test_the_cli_prints_a_changed_lm_eval_as_one_error_line(monkeypatch, capsys):
    """`modarb eval` stops before loading anything, with exit 2 and one line, no traceback."""
    from lm_eval import evaluator

    monkeypatch.setattr(evaluator, "evaluate", lambda lm, task_dict: None)
    assert main(["eval", "--tasks", "mf_language_control", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("modarb: error: lm-eval ")
    assert "changed evaluate: it takes (lm, task_dict)" in err[0]



def _lm_eval_patches(source: str) -> list[int]:
    """Lines of `source` that assign to (or setattr on) an attribute of something imported from lm-eval."""
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(alias.asname or alias.name).split(".")[0] for alias in node.names
                         if alias.name.split(".")[0] == "lm_eval"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lm_eval":
            imported |= {alias.asname or alias.name for alias in node.names}

    def from_lm_eval(node) -> bool:
        while isinstance(node, ast.Attribute):
            node = node.value
        return isinstance(node, ast.Name) and node.id in imported

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            targets = [ast.Attribute(value=node.args[0])] if node.args else []
        else:
            targets = []
        lines += [node.lineno for target in targets if isinstance(target, ast.Attribute) and from_lm_eval(target)]
    return lines


def test_the_patch_finder_finds_patches_written_the_usual_ways():
    assert _lm_eval_patches("import lm_eval.api.model\nlm_eval.api.model.CachingLM = object\n") == [2]
    assert _lm_eval_patches("from lm_eval.api import task\n\ntask.tqdm = print\n") == [3]
    assert _lm_eval_patches("from lm_eval import evaluator as e\nsetattr(e, 'evaluate', print)\n") == [2]
    assert _lm_eval_patches("from lm_eval.tasks import TaskManager\nTaskManager.__init__ = print\n") == [2]
    assert _lm_eval_patches("from lm_eval.loggers import EvaluationTracker\ntracker = EvaluationTracker()\n"
                            "tracker.date_id = None\n") == []  # an instance's own attribute


def test_no_module_but_the_adapter_patches_lm_eval():
    root = Path(lm_eval_adapter.__file__).parents[2]
    sources = [path for package in ("interventions", "leaderboard", "modarb_tasks", "benchmarks")
               for path in sorted((root / package).rglob("*.py")) if path != Path(lm_eval_adapter.__file__)]
    assert len(sources) > 50
    assert {str(path): lines for path in sources if (lines := _lm_eval_patches(path.read_text(encoding="utf-8")))} == {}
