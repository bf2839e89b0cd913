"""`modarb check` on real runs of the bundled organism: its own baseline passes, a real regression fails.

The regression is the organism with its identified top-10% heads blocked (follow-text 0.42 -> 0.23 on
the test split). Its top-5% block (0.545 vs 0.565 MF ratio) is within sampling noise on this
organism, so it is no regression for `check` to catch; the report's blocking curve shows both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interventions.analysis.evaluation import Evaluator, quiet_lm_eval
from interventions.cli import main
from interventions.spec import InterventionSpec

TOP10_SPEC = Path(__file__).resolve().parents[1] / "leaderboard" / "specs" / "modarb-organism_block_top10.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, organism_dir):
    from interventions.lm import ModarbVLM

    quiet_lm_eval()
    lm = ModarbVLM(batch_size=64)
    evaluator = Evaluator(lm, "", tmp_path_factory.mktemp("check_runs"), limit=200, batch_size=64)
    baseline = evaluator.run("baseline", None)
    blocked = evaluator.run("block_top10", InterventionSpec.load(TOP10_SPEC))
    return baseline, blocked


def test_organism_passes_against_its_own_baseline(runs, capsys):
    baseline, _ = runs
    assert main(["check", "--baseline", str(baseline.results_file), "--results", str(baseline.results_file)]) == 0
    assert "no regression on 4 tasks" in capsys.readouterr().out


def test_organism_with_its_top_10pct_heads_blocked_is_a_regression(runs, capsys):
    baseline, blocked = runs
    assert blocked.scores["mf_ratio"] < baseline.scores["mf_ratio"]
    assert main(["check", "--baseline", str(baseline.results_file), "--results", str(blocked.results_file)]) == 1
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("REGRESSION on") and "mf_follow" in verdict
