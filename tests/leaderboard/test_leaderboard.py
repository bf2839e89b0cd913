"""Leaderboard entries and board, on results files written by lm-eval itself (tests/fixtures/leaderboard)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fixtures.leaderboard.helpers import raw_results, results_file, run_modarb

from modarb_tasks.errors import ModarbError
from leaderboard.entries import DuplicateEntryError, add_results, load_entries, read_results_entry

RESULT_RUNS = ("organism_baseline", "organism_block_top5", "organism_amplify_top5")


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """An entries folder holding the three organism runs and the smoke run."""
    entries = tmp_path / "entries"
    add_results([results_file(run) for run in RESULT_RUNS], entries)
    add_results([results_file("smoke_qwen2vl")], entries, kind="smoke")
    return entries


def test_entry_carries_the_results_numbers_and_provenance():
    path = results_file("organism_block_top5")
    raw = json.loads(path.read_text())
    entry = read_results_entry(path)

    assert entry["model"] == "modarb-organism"
    assert entry["intervention"] == {"identity": "sha256:5f1c0a9e2b7d4c31", "name": "block top-5% heads"}
    assert entry["date"] == datetime.fromtimestamp(raw["date"], tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert entry["versions"] == {"lm_eval": "0.4.13", "modarb": "0.1.0", "transformers": raw["transformers_version"]}
    assert entry["source"] == {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert sorted(entry["tasks"]) == ["mf_follow_image", "mf_follow_text", "mf_language_control", "mf_visual_control"]
    image = entry["tasks"]["mf_follow_image"]
    assert image["n"] == raw["n-samples"]["mf_follow_image"]["effective"] == 40
    assert image["metrics"]["mf_ratio"] == {"value": raw["results"]["mf_follow_image"]["mf_ratio,none"],
                                            "stderr": raw["results"]["mf_follow_image"]["mf_ratio_stderr,none"]}
    assert image["metrics"]["mf_conditional"]["stderr"] is None  # lm-eval wrote "N/A"
    assert entry["tasks"]["mf_visual_control"]["metrics"]["acc"]["value"] == 0.9


def test_no_spec_identity_is_the_baseline_and_model_args_may_be_a_string(tmp_path: Path):
    assert read_results_entry(results_file("organism_baseline"))["intervention"] == {
        "identity": "none", "name": "baseline"}
    raw = raw_results("organism_baseline")
    raw["config"]["model_args"] = "pretrained=org/some-vlm,dtype=bfloat16"
    (tmp_path / "results_a.json").write_text(json.dumps(raw))
    assert read_results_entry(tmp_path / "results_a.json")["model"] == "org/some-vlm"
    raw["config"]["model_args"] = ""
    (tmp_path / "results_b.json").write_text(json.dumps(raw))
    assert read_results_entry(tmp_path / "results_b.json")["model"] == "modarb-organism"


def test_adding_the_same_results_twice_skips_the_identical_entry_and_refuses_a_changed_one(tmp_path, monkeypatch,
                                                                                           capsys):
    entries = tmp_path / "entries"
    source = results_file("organism_baseline")
    status, out, _ = run_modarb(monkeypatch, capsys, "leaderboard", "add", source, "--entries", entries)
    assert status == 0
    (stored,) = entries.glob("*.json")
    assert out == f"added {stored}\n"
    before = stored.read_bytes()

    # the same add again (e.g. after an interrupt): the identical entry is skipped, nothing is rewritten
    status, out, err = run_modarb(monkeypatch, capsys, "leaderboard", "add", source.parent.parent, "--entries", entries)
    assert status == 0 and err == ""
    assert out == f"skipped {source}: already on the leaderboard as {stored.name} (identical entry)\n"
    assert list(entries.glob("*.json")) == [stored] and stored.read_bytes() == before

    # the same file shown under another name is a different entry for the same run: refused
    status, out, err = run_modarb(monkeypatch, capsys, "leaderboard", "add", source, "--model-name", "other",
                                  "--entries", entries)
    assert status == 2 and out == ""
    assert err == (f"modarb: error: {source}: already on the leaderboard as {stored.name} (same results file); "
                   "pass --replace to overwrite that entry\n")
    assert list(entries.glob("*.json")) == [stored] and stored.read_bytes() == before

    status, _, _ = run_modarb(monkeypatch, capsys, "leaderboard", "add", source, "--replace", "--entries", entries)
    assert status == 0 and list(entries.glob("*.json")) == [stored]


def test_the_same_run_in_another_file_is_refused(tmp_path: Path):
    entries = tmp_path / "entries"
    add_results([results_file("organism_baseline")], entries)
    raw = raw_results("organism_baseline")
    raw["total_evaluation_time_seconds"] = "999.0"  # different bytes, same run
    copy = tmp_path / "copy" / "results_copy.json"
    copy.parent.mkdir()
    copy.write_text(json.dumps(raw))
    with pytest.raises(DuplicateEntryError, match=r"\(same model, intervention, date and metrics\); pass --replace"):
        add_results([copy], entries)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "malformed JSON (Expecting property name enclosed in double quotes at line 1)"),
    ('{"results": {}}', "not an lm-eval results file (no valid 'config' key)"),
    ("[1, 2]", "not an lm-eval results file (top level is not an object)"),
])
def test_malformed_results_are_one_line_errors(tmp_path, monkeypatch, capsys, content, problem):
    bad = tmp_path / "results_bad.json"
    bad.write_text(content)
    status, _, err = run_modarb(monkeypatch, capsys, "leaderboard", "add", bad, "--entries", tmp_path / "entries")
    assert status == 2
    assert err == (f"modarb: error: {bad}: {problem}; pass the results_*.json (or its folder) "
                   "that `lm_eval --output_path` writes\n")
    assert not (tmp_path / "entries").exists()


def test_foreign_results_are_a_one_line_error_and_the_batch_writes_nothing(tmp_path, monkeypatch, capsys):
    entries = tmp_path / "entries"
    foreign = results_file("foreign")
    status, _, err = run_modarb(monkeypatch, capsys, "leaderboard", "add", results_file("organism_baseline"),
                                foreign, "--entries", entries)
    assert status == 2
    assert err == (f"modarb: error: {foreign}: no modarb task in these results (found: arc_stub); "
                   "run lm_eval with --tasks modarb (or modality_following, modality_controls)\n")
    assert not entries.exists()


def test_a_folder_without_results_is_an_error(tmp_path: Path):
    with pytest.raises(ModarbError, match=r"no results_\*\.json inside"):
        add_results([tmp_path], tmp_path / "entries")


def _markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Section title -> the Markdown table under it, as dicts keyed by header."""
    tables = {}
    for section in text.split("\n## ")[1:]:
        title, body = section.split("\n", 1)
        lines = [line for line in body.splitlines() if line.startswith("|")]
        cells = [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
        tables[title] = [dict(zip(cells[0], row)) for row in cells[2:]]
    return tables


def _expected_cell(raw: dict, task: str, metric: str) -> str:
    scores = raw["results"][task]
    return f"{scores[f'{metric},none']:.3f} ± {scores[f'{metric}_stderr,none']:.3f}"


def test_markdown_table_matches_the_entries(board: Path, tmp_path: Path):
    from leaderboard.board import build_board

    build_board(board, tmp_path / "out")
    tables = _markdown_tables((tmp_path / "out" / "README.md").read_text())
    results, smoke = tables["Results"], tables["Smoke entries (tiny random-init models, not results)"]

    raws = {run: raw_results(run) for run in RESULT_RUNS}
    base_mf = raws["organism_baseline"]["groups"]["modality_following"]["mf_ratio,none"]
    expected = []
    for run in ("organism_baseline", "organism_amplify_top5", "organism_block_top5"):  # baseline first, then by name
        raw = raws[run]
        mf = raw["groups"]["modality_following"]["mf_ratio,none"]  # lm-eval's own size-weighted pooling
        expected.append({
            "Model": "modarb-organism",
            "Intervention": raw["config"].get("modarb_spec_name", "baseline"),
            "Suite": "`mf_*`",
            "Items (n)": "40",
            "Follow image": _expected_cell(raw, "mf_follow_image", "mf_ratio"),
            "Follow text": _expected_cell(raw, "mf_follow_text", "mf_ratio"),
            "Visual control": _expected_cell(raw, "mf_visual_control", "acc"),
            "Language control": _expected_cell(raw, "mf_language_control", "acc"),
            "Δ MF ratio": f"{round(mf - base_mf, 3) + 0.0:+.3f}" + ("" if run == "organism_baseline" else " (unpaired)"),
            "MF ratio": f"{mf:.3f}",
        })
    for row in results + smoke:  # the pooled stderr is checked in test_catalog.py
        row["MF ratio"] = row["MF ratio"].split(" ± ")[0]
    assert results == expected
    assert [row["Δ MF ratio"] for row in results] == ["+0.000", "+0.050 (unpaired)", "-0.525 (unpaired)"]

    qwen = raw_results("smoke_qwen2vl")
    assert smoke == [{
        "Model": "tiny-random/qwen2-vl", "Intervention": "baseline", "Suite": "`mf_*`", "Items (n)": "40/40/–/–",
        "Follow image": _expected_cell(qwen, "mf_follow_image", "mf_ratio"),
        "Follow text": _expected_cell(qwen, "mf_follow_text", "mf_ratio"),
        "MF ratio": f"{qwen['groups']['modality_following']['mf_ratio,none']:.3f}",
        "Visual control": "–", "Language control": "–", "Δ MF ratio": "+0.000",
    }]


def test_build_is_byte_identical_for_the_same_entries(board: Path, tmp_path: Path):
    from leaderboard.board import build_board

    first = build_board(board, tmp_path / "one")
    second = build_board(board, tmp_path / "two")
    assert [p.relative_to(tmp_path / "one") for p in first] == [p.relative_to(tmp_path / "two") for p in second]
    assert len(first) == 4  # README.md, index.html, two plots
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


class _TableRows(HTMLParser):
    """Text of every body row of every table, by table id; and the body's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.body: dict[str, str] = {}
        self._table = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.body = dict(attrs)
        elif tag == "table":
            self._table = dict(attrs)["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table and "data-entry" in dict(attrs):
            self.tables[self._table].append([])
        elif tag == "td" and self._table:
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = None


def test_html_page_renders_in_headless_chromium_with_the_entries_rows(board: Path, tmp_path: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (CI: apt-get update && apt-get install -y chromium)")
    from leaderboard.board import COLUMNS, board_rows, build_board, cell_text

    build_board(board, tmp_path / "out")
    page = (tmp_path / "out" / "index.html").resolve()
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", f"{page.as_uri()}#sort=-mf_ratio"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    parsed = _TableRows()
    parsed.feed(dom)

    assert parsed.body.get("data-sortable") == "ready"  # the sorting script ran without error
    rows = board_rows(load_entries(board))
    expected = {kind: [[cell_text(r, c) for c in COLUMNS] for r in rows if r.kind == kind]
                for kind in ("result", "smoke")}
    # The #sort=-mf_ratio link sorted the results table by MF ratio, descending: amplify, baseline, block.
    assert parsed.tables["results"] == [expected["result"][i] for i in (1, 0, 2)]
    assert [row[1] for row in parsed.tables["results"]] == ["amplify top-5% heads x2", "baseline", "block top-5% heads"]
    assert parsed.tables["smoke"] == expected["smoke"]
    assert dom.count('src="data:image/png;base64,') == 2


def test_names_are_escaped_for_each_page(tmp_path: Path):
    """Markdown cells escape | and backslash; the HTML page is autoescaped."""
    from leaderboard.board import build_board

    entries = tmp_path / "entries"
    add_results([results_file("organism_baseline")], entries, model_name="a|b\\c <i>&")
    build_board(entries, tmp_path / "out")
    assert "| a\\|b\\\\c <i>& | baseline |" in (tmp_path / "out" / "README.md").read_text()
    page = (tmp_path / "out" / "index.html").read_text()
    assert '<td data-sort="a|b\\c &lt;i&gt;&amp;">a|b\\c &lt;i&gt;&amp;</td>' in page and "<i>" not in page


def test_an_entry_with_a_task_the_pack_lacks_is_a_one_line_error(tmp_path: Path):
    entries = tmp_path / "entries"
    (stored,) = add_results([results_file("organism_baseline")], entries)
    entry = json.loads(stored.read_text())
    entry["tasks"]["mf_follow_image_retired"] = entry["tasks"]["mf_follow_image"]
    stored.write_text(json.dumps(entry))
    with pytest.raises(ModarbError, match=r"task mf_follow_image_retired is not in modarb's task pack "
                                          r"\(modarb_tasks/tasks\); restore its YAML or remove the entry$"):
        load_entries(entries)


def test_each_suite_of_an_entry_gets_its_own_row(tmp_path: Path):
    from leaderboard.board import board_rows, cell_text

    raw = raw_results("organism_baseline")
    raw["results"]["mf_follow_image_ll"] = dict(raw["results"]["mf_follow_image"], **{"mf_ratio,none": 0.6})
    raw["n-samples"]["mf_follow_image_ll"] = {"original": 40, "effective": 40}
    (tmp_path / "results_x.json").write_text(json.dumps(raw))
    entries = tmp_path / "entries"
    add_results([tmp_path / "results_x.json"], entries)
    rows = board_rows(load_entries(entries))
    assert [(r.suite, cell_text(r, "follow_image"), cell_text(r, "mf_ratio"), cell_text(r, "delta_mf_ratio"))
            for r in rows] == [("mf_*", "0.975 ± 0.025", "0.900 ± 0.033", "+0.000"),
                               ("mf_*_ll", "0.600 ± 0.025", "–", "–")]


def test_a_run_on_fewer_items_is_never_the_baseline_of_a_fuller_one(tmp_path: Path):
    """A later --limit 8 baseline does not become the reference of the 40-item runs; the board shows n."""
    from leaderboard.board import board_rows, cell_text

    quick = raw_results("organism_baseline")
    quick["date"] += 3600  # the latest baseline...
    for task in quick["n-samples"]:
        quick["n-samples"][task] = {"original": 40, "effective": 8}  # ...but on 8 items per task
        quick["results"][task][next(k for k in quick["results"][task] if k.startswith(("mf_ratio,", "acc,")))] = 0.5
    (tmp_path / "results_quick.json").write_text(json.dumps(quick))
    entries = tmp_path / "entries"
    add_results([results_file("organism_baseline"), results_file("organism_block_top5"),
                 tmp_path / "results_quick.json"], entries)
    rows = {(r.intervention, cell_text(r, "items")): cell_text(r, "delta_mf_ratio")
            for r in board_rows(load_entries(entries))}
    blocked = next(key for key in rows if key[0] != "baseline")
    assert blocked[1] == "40" and rows[("baseline", "8")] == "+0.000" and rows[("baseline", "40")] == "+0.000"
    full = raw_results("organism_baseline")["groups"]["modality_following"]["mf_ratio,none"]
    top5 = raw_results("organism_block_top5")["groups"]["modality_following"]["mf_ratio,none"]
    assert rows[blocked] == f"{round(top5 - full, 3) + 0.0:+.3f} (unpaired)"  # against the 40-item baseline
