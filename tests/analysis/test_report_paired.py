"""reproduce's report with per-item comparisons: the paired table, the top-vs-random test and which
targets are met significantly (on the saved summary of tests/fixtures/report, given paired numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interventions.analysis.report import markdown, targets, top_vs_random

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "report"


def _compared(delta, low, high, b, c, p):
    return {"delta": delta, "low": low, "high": high, "b": b, "c": c, "p": p, "n": 80}


@pytest.fixture
def summary() -> dict:
    summary = json.loads((FIXTURE / "summary.json").read_text())
    summary["block_top"]["vs_baseline"] = {
        "mf_ratio": _compared(-0.36, -0.46, -0.25, 30, 1, 1e-8),
        "visual_control": _compared(-0.025, -0.09, 0.04, 2, 1, 1.0),
        "language_control": _compared(0.0, -0.045, 0.045, 0, 0, 1.0)}
    return summary


def test_top_vs_random_is_a_permutation_p_over_the_draws(summary):
    base = summary["baseline"]["mf_ratio"]
    draws = [draw["mf_ratio"] for draw in summary["block_random"]["draws"]]
    tested = top_vs_random(summary)
    assert tested["draws"] == len(draws) == 5
    assert tested["top_drop"] == pytest.approx(base - summary["block_top"]["mf_ratio"])
    assert tested["as_large"] == sum(base - d >= tested["top_drop"] for d in draws) == 0
    assert tested["p"] == pytest.approx(1 / 6)  # the smallest p five draws allow

    summary["block_random"]["draws"] = summary["block_random"]["draws"] * 4  # 20 draws
    assert top_vs_random(summary)["p"] == pytest.approx(1 / 21)


def test_targets_say_whether_they_are_met_significantly(summary):
    summary["top_vs_random"] = top_vs_random(summary)
    rows = targets(summary)
    base = summary["baseline"]["mf_ratio"]
    # the near end of the drop, 0.25 of the baseline's MF ratio, against the 40% bar
    assert rows[0]["significant"] is (0.25 / base >= 0.40)
    assert rows[1]["significant"] is False  # the visual control may have dropped by up to 0.09 > 0.05
    assert rows[2]["significant"] is False  # p = 1/6 with 5 draws
    assert [row["significant"] for row in rows[3:]] == [None, None, None]


def test_the_report_shows_the_paired_rows_and_the_test(summary, tmp_path):
    summary["top_vs_random"] = top_vs_random(summary)
    summary["targets"] = targets(summary)
    flow = json.loads((FIXTURE / "flow.json").read_text())
    text = markdown(summary, flow, tmp_path)
    heads = summary["block_top"]["heads"]
    assert f"| block top heads {heads} | – | – | -0.360 [-0.460, -0.250] b 30 c 1 p 1e-08 | " in text
    assert "0 of 5 random sets of as many heads drop it as much, p = 0.167 ((1 + 0) / (1 + 5))" in text
    assert "| check | value | bar | met | significantly |" in text


def test_paired_vs_pools_the_follow_items_and_pairs_each_task_on_shared_docs():
    from interventions.analysis.evaluation import Run, paired_vs

    def run(image, text, visual):
        outcomes = {"mf_follow_image": dict(enumerate(image)), "mf_follow_text": dict(enumerate(text)),
                    "mf_visual_control": dict(enumerate(visual))}
        return Run("r", {}, {}, {}, Path("results.json"), "", outcomes=outcomes)

    baseline = run([1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1])
    blocked = run([1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1])  # one visual doc not scored: paired on the other three
    compared = paired_vs(baseline, blocked)
    assert set(compared) == {"follow_image", "follow_text", "mf_ratio", "visual_control"}
    assert {k: compared["mf_ratio"][k] for k in ("b", "c", "n")} == {"b": 3, "c": 1, "n": 8}
    assert compared["mf_ratio"]["delta"] == pytest.approx(-2 / 8)
    assert compared["follow_text"]["p"] == pytest.approx(1.0)  # b 2, c 1
    assert compared["visual_control"]["n"] == 3
    assert compared["visual_control"]["b"] == compared["visual_control"]["c"] == 0
