"""`modarb reproduce` on the bundled organism, shrunk: the report is complete and recomputable."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from interventions import cli
from interventions.analysis.reproduce import ReproduceConfig, reproduce

AMPLIFY_ITEMS = 5
SCORES = ("follow_image", "follow_text", "mf_ratio", "visual_control", "language_control")


class _Warnings(logging.Handler):
    """The lm-eval warnings that reach the user (what its loggers let through)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


LM_EVAL_WARNINGS = _Warnings()


@pytest.fixture(scope="module")
def small_report(tmp_path_factory, organism_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("reproduce") / "report"
    config = ReproduceConfig(
        out=out, limit=12, batch_size=16, fractions=(0.05, 0.10), draws=2, alphas=(2.0, 4.0),
        analysis_items=6, amplify_items=AMPLIFY_ITEMS, learned_steps=4, seed=0,
    )
    logging.getLogger("lm_eval").addHandler(LM_EVAL_WARNINGS)
    try:
        return out, reproduce(config)
    finally:
        logging.getLogger("lm_eval").removeHandler(LM_EVAL_WARNINGS)


@pytest.mark.slow
def test_no_lm_eval_warning_repeats_run_after_run(small_report):
    """A reproduce scores dozens of lm-eval runs: a warning lm-eval gives per task or per model must not repeat."""
    repeated = {message for message in LM_EVAL_WARNINGS.messages if LM_EVAL_WARNINGS.messages.count(message) > 1}
    assert repeated == set()
    assert not any("Custom kwargs" in m or "neither marked as CausalLM" in m for m in LM_EVAL_WARNINGS.messages)


@pytest.mark.slow
def test_summary_carries_every_promised_key(small_report):
    out, summary = small_report
    assert json.loads((out / "summary.json").read_text())["model"] == summary["model"] == "modarb-organism"
    for key in ("baseline", "block_top", "block_random"):
        assert set(SCORES) <= set(summary[key])
        assert all(0.0 <= summary[key][score] <= 1.0 for score in SCORES)
    assert len(summary["block_top"]["heads"]) == 2  # 5% of 48 heads
    assert summary["amplify"]["best_alpha"] in (2.0, 4.0)
    assert 0.0 <= summary["amplify"]["restoration_rate"] <= 1.0 or summary["amplify"]["failed_items"] == 0
    assert {"top_overlap", "rank_correlation"} <= set(summary["identify"])
    assert summary["seconds"] > 0
    assert len(summary["blocking_curve"]) == 2 and all(len(p["random"]) == 2 for p in summary["blocking_curve"])
    assert len(summary["targets"]) == 6


@pytest.mark.slow
def test_each_rankings_top_set_is_blocked_and_recorded(small_report):
    out, summary = small_report
    identified = json.loads((out / "identify" / "identify.json").read_text())
    by_ranking = summary["block_top_by_ranking"]
    assert set(by_ranking) == {"attribution", "ablation", "selective", "learned"}
    assert by_ranking["learned"] == summary["block_top"]  # the learned mask is the headline run by default
    report = (out / "report.md").read_text()
    for method, run in by_ranking.items():
        assert run["heads"] == identified["rankings"][method]["top"]
        assert run["command"] in report
        assert all(0.0 <= run[score] <= 1.0 for score in SCORES)
    curves = summary["identify"]["gate_response"]
    assert curves and curves[0]["head"] == identified["rankings"]["ablation"]["top"][0]
    assert "identify/gate_response.png" in report and (out / "identify" / "gate_response.png").stat().st_size > 1000


@pytest.mark.slow
def test_random_mean_is_the_mean_of_the_draws(small_report):
    _, summary = small_report
    draws = summary["block_random"]["draws"]
    for score in SCORES:
        assert summary["block_random"][score] == pytest.approx(sum(d[score] for d in draws) / len(draws))


@pytest.mark.slow
def test_report_lists_figures_and_commands_that_exist(small_report):
    out, summary = small_report
    report = (out / "report.md").read_text()
    for figure in ("figures/blocking_curve.png", "figures/amplification.png"):
        assert figure in report and (out / figure).stat().st_size > 1000
    assert summary["block_top"]["command"] in report
    assert (out / "flow" / "flow.json").is_file() and (out / "identify" / "identify.json").is_file()
    assert not list(out.parent.glob(".*partial-*")), "the work folder must be renamed into place"


@pytest.mark.slow
def test_every_recorded_path_names_the_report_folder_not_the_staging_one(small_report):
    """Files are written in a hidden folder and moved into place: what they record names the final folder."""
    out, summary = small_report
    assert f"--out {out / 'flow'} " in summary["flow"]["command"]
    assert f"--out {out / 'identify'} " in summary["identify"]["command"]
    assert f"spec={out / 'runs'}/" in summary["block_top"]["command"]
    identified = json.loads((out / "identify" / "identify.json").read_text())
    assert json.loads((out / "identify" / identified["spec"]).read_text())["provenance"]["command"] == identified["command"]
    records = [path for path in out.rglob("*") if path.suffix in (".json", ".md")]
    assert records and not [path for path in records if ".report.partial-" in path.read_text(encoding="utf-8")]


@pytest.mark.slow
def test_block_top_number_is_recomputed_by_its_command(small_report):
    """Run the recorded `modarb eval` command and compare its scores with the summary's."""
    out, summary = small_report
    command = summary["block_top"]["command"].split(" ", 1)[1]  # drop the leading "modarb"
    results_dir = out.parent / "recompute"
    completed = subprocess.run(
        f"{sys.executable} -m interventions {command} --output_path {results_dir}",
        shell=True, capture_output=True, text=True, cwd=Path.cwd(),
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads(next(results_dir.rglob("results_*.json")).read_text())["results"]
    assert results["mf_follow_image"]["mf_ratio,none"] == pytest.approx(summary["block_top"]["follow_image"])
    assert results["mf_follow_text"]["mf_ratio,none"] == pytest.approx(summary["block_top"]["follow_text"])
    assert results["mf_visual_control"]["acc,none"] == pytest.approx(summary["block_top"]["visual_control"])


def test_bad_top_fraction_is_one_line_and_writes_nothing(tmp_path, capsys):
    """In process (the catalogue in test_bad_input runs the same case as a real `modarb` process)."""
    assert cli.main(["reproduce", "--out", str(tmp_path / "r"), "--top", "0.07"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "modarb: error: --top 0.07 must be one of the blocking fractions [0.01, 0.02, 0.05, 0.1, 0.15, 0.2]"
    ]
    assert not (tmp_path / "r").exists()


class _Stopped(Exception):
    """Raised by the stand-in reproduce once it has seen its config."""


@pytest.fixture
def configs(monkeypatch) -> list[ReproduceConfig]:
    """The configs `modarb reproduce` hands to the analysis (which is replaced by one that stops)."""
    seen = []

    def stop(config):
        seen.append(config)
        raise _Stopped

    monkeypatch.setattr("interventions.analysis.reproduce.reproduce", stop)
    return seen


def test_amplify_items_flag_reaches_the_config(configs, tmp_path):
    for argv in (["--amplify-items", "7"], []):
        with pytest.raises(_Stopped):
            cli.main(["reproduce", "--out", str(tmp_path / "r"), *argv])
    assert [config.amplify_items for config in configs] == [7, ReproduceConfig().amplify_items] == [7, 150]


@pytest.mark.parametrize("value", ["0", "-3"])
def test_amplify_items_below_one_is_one_line(value, configs, tmp_path, capsys):
    assert cli.main(["reproduce", "--out", str(tmp_path / "r"), "--amplify-items", value]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"modarb: error: --amplify-items must be at least 1, not {value}"]
    assert configs == [] and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_objective_is_recorded_for_every_ranking(small_report):
    out, summary = small_report
    identified = json.loads((out / "identify" / "identify.json").read_text())
    objective = summary["identify"]["objective"]
    assert objective == identified["objective"]["by_ranking"]
    assert set(objective) == {"attribution", "ablation", "selective", "learned"}
    for method, terms in objective.items():
        assert terms["heads"] == identified["rankings"][method]["top"]
        hinged = sum(max(0.0, terms[f"{kind}_drop"]) for kind in ("visual_control", "language_control"))
        assert terms["value"] == pytest.approx(terms["following_drop"] - hinged)
    best = summary["identify"]["objective_best"]
    assert objective[best]["value"] == max(terms["value"] for terms in objective.values())
    assert f"On validation, **{best}** wins on the objective" in (out / "report.md").read_text()


@pytest.mark.slow
def test_amplification_reports_restored_and_broken_shares(small_report):
    out, summary = small_report
    amplify = summary["amplify"]
    assert amplify["failed_items"] + amplify["followed_items"] == 2 * summary["limit"]  # every follow item scored
    validation = amplify["validation"]  # the gates are fit on amplify_items validation items per follow task
    assert validation["failed"] + validation["followed"] == 2 * AMPLIFY_ITEMS
    assert amplify["broken_rate"] == pytest.approx(amplify["broken"] / amplify["followed_items"])
    assert len(amplify["heads"]) == len(amplify["gates"]) == 4 and all(g >= 1 for g in amplify["gates"])
    assert amplify["best_alpha"] == max(amplify["alpha_validation"], key=lambda p: (p["value"], -p["alpha"]))["alpha"]
    assert {"restoration_rate", "broken_rate"} <= set(amplify["sweep_at_best_alpha"])
    assert amplify["command"] in (out / "report.md").read_text()


@pytest.mark.slow
def test_steering_is_chosen_on_validation_and_scored_beside_amplification(small_report):
    """On the organism reproduce steers by default: each direction's layer and alpha are the best of the
    validation search, its test run pairs item by item with the baseline, and the comparison ranks it
    with both amplifications by one value."""
    from interventions.analysis.steer import value_on_test
    from interventions.mechanism.spec import InterventionSpec

    out, summary = small_report
    steer = summary["steer"]
    assert steer["settings"], "the organism's validation items split both ways: every default direction is fitted"
    for setting in steer["settings"]:
        assert setting["validation"]["value"] == max(point.get("value", point["bound"]) for point in setting["tried"])
        assert (setting["validation"]["failed"] + setting["validation"]["followed"]) == 2 * AMPLIFY_ITEMS
        test = setting["test"]
        assert test["failed"] + test["followed"] == 2 * summary["limit"]
        assert 0.0 <= test["other"] <= 1.0
        spec = InterventionSpec.load(out / setting["spec"])
        assert spec.identity() == setting["identity"]
        assert (spec.steering.layers, spec.steering.alpha) == ((setting["layer"],), setting["alpha"])
        assert set(setting["vs_amplify_learned"]) >= {"mf_ratio", "visual_control", "language_control"}
    rows = steer["comparison"]["rows"]
    assert [row["intervention"] for row in rows][:2] == [
        "amplify (learned gates)", f"amplify top heads x{summary['amplify']['best_alpha']:g}"]
    assert (rows[0]["restored"], rows[0]["broken"]) == (summary["amplify"]["restored"], summary["amplify"]["broken"])
    for row in rows:
        assert row["value"] == pytest.approx(value_on_test(row, summary["baseline"]))
    assert steer["comparison"]["best"] == max(rows, key=lambda row: row["value"])["intervention"]
    report = (out / "report.md").read_text()
    assert "## Residual steering beside amplification" in report
    assert f"Best: **{steer['comparison']['best']}**" in report
    assert summary["work"]["steering (validation)"]["forwards"] > 0


def test_steer_flag_reaches_the_config(configs, tmp_path):
    """--steer is on by default for the organism only; --no-steer and --steer override the default."""
    for argv in ([], ["--no-steer"], ["--steer"]):
        with pytest.raises(_Stopped):
            cli.main(["reproduce", "--out", str(tmp_path / "r"), *argv])
    assert [(config.steer, config.steers) for config in configs] == [(None, True), (False, False), (True, True)]
    assert not ReproduceConfig(model="some/7b").steers and ReproduceConfig(model="some/7b", steer=True).steers
