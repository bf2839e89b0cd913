"""`--use_cache`: answers are keyed by model and intervention, never shared between them.

lm-eval keys a cached request by its content alone; modarb's scoped cache (interventions/model/cache.py)
adds the model's fingerprint and the spec's identity. The CLI test runs the commands a user runs; the
in-process tests count the model's forward calls to show what was recomputed and what was not.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from interventions.mechanism.spec import HeadScale, InterventionSpec, KnockoutSpec, model_fingerprint
from modarb_tasks import TASKS_PATH
from untrained_organism import save_untrained_organism

MODARB = str(Path(sys.executable).parent / "modarb")
LIMIT = 20  # items per `modarb eval` process
LIMIT_HERE = 8  # items per in-process run (nine runs a test)
TASK = "mf_follow_text"


def _start(out: Path, cache_path: Path | None, *model_args: str) -> tuple[subprocess.Popen, Path]:
    """Start one `modarb eval` process as a user types it."""
    args = [MODARB, "eval", "--model", "hf-modarb", "--tasks", TASK, "--limit", str(LIMIT), "--batch_size", "16",
            "--device", "cpu", "--output_path", str(out)]
    args += ["--model_args", ",".join(model_args)] if model_args else []
    args += ["--use_cache", str(cache_path)] if cache_path else []
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                        "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out


def _finish(started: tuple[subprocess.Popen, Path]) -> tuple[float, int, int, dict]:
    """(mf_ratio, cached requests, computed requests, the results' config) of a started run."""
    process, out = started
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-2000:]
    counts = re.search(r"Cached requests: (\d+), Requests remaining: (\d+)", stderr)
    cached, computed = (int(counts[1]), int(counts[2])) if counts else (0, LIMIT)
    data = json.loads(max(out.rglob("results_*.json")).read_text())
    return data["results"][TASK]["mf_ratio,none"], cached, computed, data["config"]


@pytest.mark.usefixtures("organism_dir")
@pytest.mark.slow
def test_a_spec_never_reads_the_baselines_cached_answers(tmp_path):
    """A user's commands on one cache path (runs that share no cache file run concurrently)."""
    shared = tmp_path / "cache"
    uncached_block = _start(tmp_path / "c", None, "block=L0H5")
    baseline, _, computed, config = _finish(_start(tmp_path / "a", shared))
    assert computed == LIMIT and config["modarb_cache"]["path"] == f"{shared}_rank0.db"
    blocked, cached, computed, blocked_config = _finish(_start(tmp_path / "b", shared, "block=L0H5"))
    truth, *_ = _finish(uncached_block)
    assert (cached, computed) == (0, LIMIT)  # nothing of the baseline's answers was reused
    assert blocked == truth != baseline
    assert blocked_config["modarb_cache"]["scope_id"] != config["modarb_cache"]["scope_id"]
    assert {"model", "spec"} <= set(config["modarb_cache"]["key_scope"])
    repeats = [_start(tmp_path / "d", shared), _start(tmp_path / "e", shared, "block=L0H5")]
    (again, cached, computed, _), (again_blocked, cached_blocked, computed_blocked, _) = map(_finish, repeats)
    assert (again, cached, computed) == (baseline, LIMIT, 0)  # the same run resumes from the cache
    assert (again_blocked, cached_blocked, computed_blocked) == (blocked, LIMIT, 0)


class _Counter:
    """Counts top-level forward calls of a model (generate makes one per new token)."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.calls += 1


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=TASKS_PATH, include_defaults=False)


def _load(pretrained=None):
    from interventions.model.lm import ModarbVLM

    lm = ModarbVLM(pretrained=pretrained, batch_size=16, device="cpu")
    return lm, _Counter(lm.model)


def _score(lm, counter, spec, cache_path: Path, task_manager) -> tuple[float, int]:
    """(mf_ratio, forward calls) of one cached lm-eval run of `lm` under `spec`."""
    import lm_eval

    from interventions.model.lm_eval_adapter import evaluation_run

    lm.spec, before = spec, counter.calls
    with evaluation_run():
        results = lm_eval.simple_evaluate(model=lm, tasks=[TASK], limit=LIMIT_HERE, batch_size=16,
                                          use_cache=str(cache_path), task_manager=task_manager, verbosity="ERROR")
    return results["results"][TASK]["mf_ratio,none"], counter.calls - before


def _scaled(lm, heads, scale) -> InterventionSpec:
    return InterventionSpec(model=model_fingerprint(lm.model), heads=tuple(HeadScale(l, h, scale) for l, h in heads))


@pytest.mark.usefixtures("organism_dir")
def test_two_alphas_and_a_knockout_each_get_their_own_answers(tmp_path, task_manager):
    lm, counter = _load()
    shared = tmp_path / "cache"
    specs = {
        "x2": _scaled(lm, [(0, 5), (0, 3)], 2.0),
        "x4": _scaled(lm, [(0, 5), (0, 3)], 4.0),
        "knockout": InterventionSpec(model=model_fingerprint(lm.model),
                                     knockout=KnockoutSpec(edges=(("last", "instruction"),), layers=(0, 1))),
    }
    first = {name: _score(lm, counter, spec, shared, task_manager) for name, spec in specs.items()}
    uncached = {name: _score(lm, counter, spec, tmp_path / name, task_manager)[0] for name, spec in specs.items()}
    again = {name: _score(lm, counter, spec, shared, task_manager) for name, spec in specs.items()}
    assert all(calls > 0 for _, calls in first.values())  # each spec computed its own answers
    assert {name: score for name, (score, _) in first.items()} == uncached  # ... and they are its own
    assert {name: score for name, (score, _) in again.items()} == uncached
    assert all(calls == 0 for _, calls in again.values())  # a repeat is answered from the cache


def test_two_models_sharing_one_cache_path_keep_their_answers(tmp_path, task_manager, organism_dir):
    shared = tmp_path / "cache"
    organism, organism_calls = _load(str(organism_dir))
    other, other_calls = _load(str(save_untrained_organism(tmp_path / "untrained", layers=2)))
    trained, _ = _score(organism, organism_calls, None, shared, task_manager)
    untrained, calls = _score(other, other_calls, None, shared, task_manager)
    assert calls > 0  # the second model did not read the first one's answers
    assert untrained == _score(other, other_calls, None, tmp_path / "alone", task_manager)[0]
    assert untrained != trained
    assert _score(organism, organism_calls, None, shared, task_manager) == (trained, 0)


def test_the_cache_stores_json_not_pickle(tmp_path, task_manager, organism_dir):
    import sqlite3

    lm, counter = _load(str(organism_dir))
    _score(lm, counter, None, tmp_path / "cache", task_manager)
    rows = sqlite3.connect(tmp_path / "cache_rank0.db").execute("SELECT value FROM modarb_scoped").fetchall()
    assert len(rows) >= LIMIT_HERE  # lm-eval's per-batch hook also stores each answer under its image-less key
    assert all(isinstance(json.loads(value), str) for (value,) in rows)  # generate_until answers, as JSON text


def _numbers(summary):
    """summary.json without what legitimately differs between two runs: wall time, the recorded commands, and the
    model work counted (answers read from the cache take no forwards)."""
    if isinstance(summary, dict):
        return {key: _numbers(value) for key, value in summary.items() if key not in ("seconds", "command", "work")}
    if isinstance(summary, list):
        return [_numbers(value) for value in summary]
    return summary


@pytest.mark.slow
def test_an_interrupted_reproduce_resumes_from_its_cache(tmp_path, monkeypatch, organism_dir):
    from interventions.analysis import evaluation
    from interventions.analysis.reproduce import ReproduceConfig, reproduce

    def config(out: str, use_cache: Path | None) -> ReproduceConfig:
        return ReproduceConfig(out=tmp_path / out, limit=4, batch_size=16, fractions=(0.05,), draws=1, alphas=(2.0,),
                               analysis_items=2, learned_steps=2, amplify_items=2, seed=0, use_cache=use_cache)

    reproduce(config("reference", None))
    real_run, finished = evaluation.Evaluator.run, []

    def interrupted_run(self, name, *args, **kwargs):
        if len(finished) == 3:
            raise KeyboardInterrupt
        finished.append(name)
        return real_run(self, name, *args, **kwargs)

    monkeypatch.setattr(evaluation.Evaluator, "run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        reproduce(config("report", tmp_path / "cache"))
    assert not (tmp_path / "report").exists() and (tmp_path / "cache" / "requests_rank0.db").is_file()
    monkeypatch.setattr(evaluation.Evaluator, "run", real_run)
    reproduce(config("report", tmp_path / "cache"))
    resumed, uninterrupted = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("report", "reference"))
    assert _numbers(resumed) == _numbers(uninterrupted)
    assert "--use_cache" in resumed["baseline"]["command"]


def test_leaderboard_entries_keep_the_cache_scope():
    from leaderboard.entries import cache_used

    assert cache_used({"use_cache": None}) is None
    scoped = {"use_cache": "out/cache", "modarb_cache": {"key_scope": ["lm", "model", "pixels", "spec"], "scope_id": "ab"}}
    assert cache_used(scoped) == {"key_scope": ["request", "lm", "model", "pixels", "spec"], "scope_id": "ab"}
    assert cache_used({"use_cache": "out/cache"}) == {"key_scope": ["request"], "scope_id": None}  # stock lm-eval's
