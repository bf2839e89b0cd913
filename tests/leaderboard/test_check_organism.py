"""`modarb check` on real runs of the bundled organism: its own baseline passes, a real regression fails.

The regression is the organism with the shipped top-20% heads blocked (MF ratio 0.858 -> 0.430 and
language control 0.975 -> 0.585 on the test split). Both runs keep per-item outcomes, so the check
is paired.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interventions.analysis.evaluation import Evaluator, quiet_lm_eval
from interventions.cli import main
from interventions.mechanism.spec import InterventionSpec

pytestmark = pytest.mark.slow  # two lm-eval runs of the organism on 50 items per task
TOP20_SPEC = Path(__file__).resolve().parents[2] / "leaderboard" / "specs" / "modarb-organism_block_top20.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, organism_dir):
    from interventions.model.lm import ModarbVLM

    quiet_lm_eval()
    lm = ModarbVLM(batch_size=64)
    evaluator = Evaluator(lm, "", tmp_path_factory.mktemp("check_runs"), limit=50, batch_size=64)
    baseline = evaluator.run("baseline", None)
    blocked = evaluator.run("block_top20", InterventionSpec.load(TOP20_SPEC))
    return baseline, blocked


def test_organism_passes_against_its_own_baseline(runs, capsys):
    baseline, _ = runs
    assert main(["check", "--baseline", str(baseline.results_file), "--results", str(baseline.results_file)]) == 0
    assert "no regression on 4 tasks" in capsys.readouterr().out


def test_organism_with_its_top_20pct_heads_blocked_is_a_regression(runs, capsys):
    baseline, blocked = runs
    assert blocked.scores["mf_ratio"] < baseline.scores["mf_ratio"]
    assert main(["check", "--baseline", str(baseline.results_file), "--results", str(blocked.results_file)]) == 1
    out = capsys.readouterr().out
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("REGRESSION on") and "mf_follow" in verdict
    assert "test: paired on all 4 tasks" in out
