"""`modarb check` with per-item outcomes (lm-eval --log_samples files beside the results): the paired
rule, the unpaired fallback, and the flags and files it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fixtures.leaderboard.helpers import raw_results, results_file, run_modarb

from leaderboard.entries import add_results, read_entry
from modarb_tasks.catalog import catalog

TASKS = ("mf_follow_image", "mf_follow_text", "mf_visual_control", "mf_language_control")
STAMP = "2026-11-24T05-17-55.645984"


def write_run(folder: Path, outcomes: dict[str, list[int]], *, samples: bool = True, doc_offset: int = 0,
              spec: str | None = None) -> Path:
    """A results file built from the organism fixture's, with each task's headline metric, stderr and
    item count set from `outcomes`, and (when `samples`) lm-eval's samples_<task>_<date>.jsonl beside it."""
    raw = raw_results("organism_baseline")
    folder.mkdir(parents=True)
    if spec is not None:
        raw["config"] |= {"modarb_spec_identity": spec, "modarb_spec_name": spec}
    for task, values in outcomes.items():
        metric, n = catalog().tasks[task].headline, len(values)
        mean = sum(values) / n
        raw["results"][task][f"{metric},none"] = mean
        raw["results"][task][f"{metric}_stderr,none"] = math.sqrt(mean * (1 - mean) / (n - 1))
        raw["n-samples"][task] = {"original": n, "effective": n}
        if samples:
            lines = [json.dumps({"doc_id": doc + doc_offset, "filter": "none", metric: value})
                     for doc, value in enumerate(values)]
            (folder / f"samples_{task}_{STAMP}.jsonl").write_text("\n".join(lines) + "\n")
    path = folder / f"results_{STAMP}.json"
    path.write_text(json.dumps(raw))
    return path


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.split("\n\n")[0].splitlines()[1:]}


# 200 items per task; the regressed run loses 12 follow-text items and gains none: a 6-point drop
BASE = {task: [1] * 150 + [0] * 50 for task in TASKS}
REGRESSED = BASE | {"mf_follow_text": [0] * 12 + [1] * 138 + [0] * 50}


@pytest.mark.parametrize("lost, tolerance", [(12, "0.02"), (8, "0")])  # 6 points at the default tolerance, 4 at 0
def test_a_drop_on_200_items_is_caught_paired_and_missed_unpaired(lost, tolerance, tmp_path, monkeypatch, capsys):
    regressed = BASE | {"mf_follow_text": [0] * lost + [1] * (150 - lost) + [0] * 50}
    base, new = write_run(tmp_path / "base", BASE), write_run(tmp_path / "new", regressed)
    status, out, err = run_modarb(monkeypatch, capsys, "check", "--baseline", base, "--results", new,
                                  "--tolerance", tolerance)
    assert (status, err) == (1, "")
    row = _rows(out)["mf_follow_text"]
    assert row[-1] == "REGRESSION" and "paired" in row
    assert row[row.index("paired") + 3:row.index("paired") + 6] == [str(lost), "0", f"{2 * 0.5**lost:.3g}"]
    assert "test: paired on all 4 tasks" in out
    assert [r[-1] for name, r in _rows(out).items() if name != "mf_follow_text"] == ["ok"] * 3

    unpaired_base = write_run(tmp_path / "base_nosamples", BASE, samples=False)
    status, out, _ = run_modarb(monkeypatch, capsys, "check", "--baseline", unpaired_base, "--results", new,
                                "--tolerance", tolerance)
    assert status == 0
    assert _rows(out)["mf_follow_text"][-1] == "ok" and "unpaired" in _rows(out)["mf_follow_text"]
    assert "test: unpaired on all 4 tasks; pairing needs both runs' per-item outcomes" in out


def test_an_entry_keeps_the_outcomes_and_pairs_without_the_samples_files(tmp_path, monkeypatch, capsys):
    (entry_path,) = add_results([write_run(tmp_path / "base", BASE)], tmp_path / "entries")
    items = read_entry(entry_path)["tasks"]["mf_follow_text"]["items"]
    assert items["outcomes"] == "1" * 150 + "0" * 50 and len(items["doc_ids_sha256"]) == 64
    status, out, _ = run_modarb(monkeypatch, capsys, "check", "--baseline", entry_path,
                                "--results", write_run(tmp_path / "new", REGRESSED))
    assert status == 1 and "test: paired on all 4 tasks" in out


def test_a_change_that_moves_no_answer_has_no_discordance_and_passes(tmp_path, monkeypatch, capsys):
    base, same = write_run(tmp_path / "base", BASE), write_run(tmp_path / "same", BASE)
    status, out, _ = run_modarb(monkeypatch, capsys, "check", "--baseline", base, "--results", same)
    assert status == 0
    for row in _rows(out).values():
        assert row[row.index("paired") + 3:row.index("paired") + 6] == ["0", "0", "1"] and row[-1] == "ok"


def test_the_minimum_detectable_drop_shrinks_with_the_item_count(tmp_path, monkeypatch, capsys):
    small = {task: [1] * 30 + [0] * 10 for task in TASKS}
    drops = []
    for name, outcomes in (("small", small), ("large", BASE)):
        path = write_run(tmp_path / name, outcomes, samples=False)
        status, out, _ = run_modarb(monkeypatch, capsys, "check", "--baseline", path, "--results", path)
        drops.append(float(_rows(out)["mf_follow_text"][-2]))
    # unpaired spread sqrt(2·0.75·0.25) at both sizes: (z + z_0.8)·spread·(1/sqrt(40) − 1/sqrt(200))
    assert drops[0] - drops[1] == pytest.approx(2.8016 * math.sqrt(0.375) * (40**-0.5 - 200**-0.5), abs=2e-3)


def test_different_doc_sets_are_bad_input(tmp_path, monkeypatch, capsys):
    base, shifted = write_run(tmp_path / "base", BASE), write_run(tmp_path / "shifted", BASE, doc_offset=1)
    status, out, err = run_modarb(monkeypatch, capsys, "check", "--baseline", base, "--results", shifted)
    assert (status, out) == (2, "") and err.count("\n") == 1 and "scored different docs" in err


@pytest.mark.parametrize("flag, value", [("--tolerance", "nan"), ("--tolerance", "inf"), ("--tolerance", "-0.1"),
                                         ("--z", "nan"), ("--z", "inf"), ("--z", "-1")])
def test_non_finite_or_negative_settings_are_refused(flag, value, tmp_path, monkeypatch, capsys):
    """Paired runs too: a NaN tolerance would make the interval's comparison pass anything."""
    base, new = write_run(tmp_path / "base", BASE), write_run(tmp_path / "new", REGRESSED)
    try:
        status, out, err = run_modarb(monkeypatch, capsys, "check", "--baseline", base, "--results", new, flag, value)
    except SystemExit as stop:  # refused while parsing the flags
        status, out, err = stop.code, "", capsys.readouterr().err
    assert (status, out) == (2, "") and err.count("\n") == 1 and "must be a finite number" in err


def test_a_nan_stderr_is_stated_as_unknown(tmp_path, monkeypatch, capsys):
    text = results_file("organism_baseline").read_text()
    raw = json.loads(text)
    raw["results"]["mf_follow_text"]["mf_ratio_stderr,none"] = float("nan")
    nan_file = tmp_path / "results_nan.json"
    nan_file.write_text(json.dumps(raw))  # json writes NaN, as Python's lm-eval would
    status, out, _ = run_modarb(monkeypatch, capsys, "check", "--baseline", results_file("organism_baseline"),
                                "--results", nan_file)
    assert status == 0
    assert _rows(out)["mf_follow_text"][5:8] == ["0.825", "±", "?"]
    assert "a stderr shown as ? is unknown and counted as 0" in out


def test_the_board_gives_the_paired_interval_and_says_when_a_run_cannot_be_paired(tmp_path):
    from leaderboard.board import board_rows, cell_text
    from leaderboard.entries import load_entries
    from modarb_tasks.paired import pair

    entries = tmp_path / "entries"
    add_results([write_run(tmp_path / "base", BASE), write_run(tmp_path / "new", REGRESSED, spec="block L1H1"),
                 write_run(tmp_path / "bare", BASE, samples=False, spec="no samples")], entries)
    cells = {r.intervention: cell_text(r, "delta_mf_ratio") for r in board_rows(load_entries(entries))}
    follow = BASE["mf_follow_image"] + BASE["mf_follow_text"]
    low, high = pair(follow, REGRESSED["mf_follow_image"] + REGRESSED["mf_follow_text"]).interval()
    assert high < 0  # 12 of 400 follow items lost, none gained
    assert cells == {"baseline": "+0.000", "block L1H1": f"-0.030 [{low:+.3f}, {high:+.3f}]*",
                     "no samples": "+0.000 (unpaired)"}
