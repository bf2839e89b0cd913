"""The checked-in board matches what ships: the organism's top-5% spec blocks the heads the demo's
learned mask chooses, each organism spec under leaderboard/specs has its run on the board, and the
organism's entries were scored as `make demo` scores them (its --limit, its tasks), with per-item
outcomes so that their Δ is paired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interventions.analysis.defaults import ReproduceConfig
from interventions.analysis.defaults import top_k
from interventions.mechanism.spec import InterventionSpec
from leaderboard.entries import ENTRIES_DIR, load_entries

ROOT = Path(__file__).resolve().parents[2]
IDENTIFY_BENCHMARK = ROOT / "benchmarks" / "results" / "cpu-2026-12-01" / "identify_versus_optimum_organism.json"
SPECS = sorted((ROOT / "leaderboard" / "specs").glob("modarb-organism_block_top*.json"))
SHAPES = {"mf_follow_image", "mf_follow_text", "mf_visual_control", "mf_language_control"}


def _organism_results() -> list[dict]:
    return [entry for entry in load_entries(ENTRIES_DIR).values()
            if entry["kind"] == "result" and entry["model"] == "modarb-organism"]


@pytest.mark.parametrize("spec_file", SPECS, ids=lambda path: path.stem)
def test_each_shipped_spec_is_the_run_on_the_board(spec_file):
    spec = InterventionSpec.load(spec_file)
    percent = spec_file.stem.rsplit("top", 1)[1]
    (entry,) = [e for e in _organism_results() if e["intervention"]["name"] == f"block top {percent}pct"]
    assert entry["intervention"]["identity"] == spec.identity()


def test_the_organism_entries_are_scored_as_the_demo_scores_them():
    entries = _organism_results()
    assert {e["intervention"]["name"] for e in entries} >= {"baseline", "block top 5pct"}
    for entry in entries:
        assert set(entry["tasks"]) == SHAPES
        assert {task["n"] for task in entry["tasks"].values()} == {ReproduceConfig().limit}
        assert all("items" in task for task in entry["tasks"].values())  # paired Δ on the board


def test_the_top_spec_blocks_the_heads_the_demos_learned_mask_chooses():
    """The identify benchmark records the learned mask's top set on the organism at the demo's settings
    (its validation items per side, its 5%); the shipped top-5% spec must block exactly those heads."""
    config = ReproduceConfig()
    recorded = json.loads(IDENTIFY_BENCHMARK.read_text())
    assert recorded["n_follow_docs"] == 2 * config.analysis_items  # both instruction sides
    spec = InterventionSpec.load(ROOT / "leaderboard" / "specs" / "modarb-organism_block_top5.json")
    assert recorded["k"] == top_k(spec.model.num_layers * spec.model.num_heads, config.top)
    assert sorted([h.layer, h.head] for h in spec.heads) == sorted(recorded["rows"]["learned"]["top"])
    assert all(h.scale == 0.0 for h in spec.heads)
