"""Head identification: gates, attribution vs derivative, exact sweep vs direct block, spec and CLI."""

from __future__ import annotations

import json

import pytest
import torch

from interventions import cli
from interventions.analysis.batches import candidate_log_mass, iter_batches, last_logits
from interventions.mechanism.heads import gate_heads
from interventions.analysis.gate_response import GATES, describe, gate_response
from interventions.analysis.selective import exhaustive_sets, selective_sweep
from interventions.analysis.data import shapes_docs
from interventions.analysis.identify import (
    LearnedMaskOptions,
    Objective,
    Ranking,
    ablation_scores,
    attribution_scores,
    curve_heads,
    identify,
    learned_mask_scores,
    logit_difference,
    rank_correlation,
    split_docs,
    top_heads,
    top_overlap,
)
from modarb_tasks.errors import ModarbError
from interventions.organism import organism_path
from interventions.mechanism.heads import scale_heads
from interventions.mechanism.locate import InterventionError
from interventions.mechanism.spec import InterventionSpec, model_fingerprint
from untrained_organism import save_untrained_organism

IDENTIFY_CLI = "interventions.cli.identify"


@pytest.fixture(scope="session")
def organism_folder(tmp_path_factory):
    return save_untrained_organism(tmp_path_factory.mktemp("tiny_organism"), layers=2)


@pytest.fixture(scope="session")
def loaded(organism_folder):
    from interventions.model.loading import load_model

    return load_model(organism_folder)


@pytest.fixture(scope="session")
def docs():
    return shapes_docs(2)  # 2 items x 4 task kinds


@pytest.fixture(scope="session")
def follow_batches(loaded, docs):
    model, processor = loaded
    return list(iter_batches(model, processor, split_docs(docs)[0], batch_size=3))  # batches of 3 and 1


def _logits(model, batch):
    return model(**batch.inputs, use_cache=False).logits


def test_gates_at_one_are_bit_identical(loaded, follow_batches):
    model, _ = loaded
    batch = follow_batches[0]
    with gate_heads(model, torch.ones(2, 4)):
        gated = _logits(model, batch)
    assert torch.equal(gated, _logits(model, batch))


def test_gate_zero_equals_block(loaded, follow_batches):
    model, _ = loaded
    batch = follow_batches[0]
    gates = torch.ones(2, 4)
    gates[1, 2] = 0.0
    with gate_heads(model, gates):
        gated = _logits(model, batch)
    with scale_heads(model, {(1, 2): 0.0}):
        blocked = _logits(model, batch)
    assert torch.allclose(gated, blocked, atol=1e-6, rtol=0)
    assert not torch.allclose(gated, _logits(model, batch), atol=1e-4)  # the gate did something


def test_gates_of_wrong_shape_name_the_fix(loaded):
    model, _ = loaded
    with pytest.raises(InterventionError, match=r"make gates of shape \(2, 4\)"):
        with gate_heads(model, torch.ones(4, 2)):
            pass


def test_attribution_is_the_derivative_of_the_mean_difference(loaded, follow_batches):
    model, _ = loaded
    rows = sum(len(b) for b in follow_batches)

    def mean_difference(gate: float, layer: int, head: int) -> float:
        """following_scores' logit difference, all in float64."""
        gates = torch.ones(2, 4, dtype=torch.float64)
        gates[layer, head] = gate
        total = 0.0
        with gate_heads(model, gates):
            for batch in follow_batches:
                log_probs = torch.log_softmax(last_logits(model, batch).double(), dim=-1)
                difference = candidate_log_mass(log_probs, batch.follow_ids) - candidate_log_mass(
                    log_probs, batch.compete_ids)
                total += float(difference.sum())
        return total / rows

    model.double()  # float64 (but RoPE, computed in float32): ~1e-8 noise on the mean difference
    try:
        ranking = attribution_scores(model, follow_batches, progress=False)
        assert ranking.scores.shape == (2, 4) and ranking.passes == 2 * len(follow_batches)
        layer, head, score = ranking.ranked[0]
        eps = 0.01  # the noise above costs < 1e-5 of the derivative; curvature over +-eps stays < 1e-4
        derivative = (mean_difference(1 + eps, layer, head) - mean_difference(1 - eps, layer, head)) / (2 * eps)
        # score = estimated drop when the gate goes 1 -> 0 = +derivative of the mean
        assert abs(score) > 1e-4
        assert score == pytest.approx(derivative, rel=1e-3)
    finally:
        model.float()


def test_ablation_score_is_the_measured_drop(loaded, follow_batches):
    model, _ = loaded
    ranking = ablation_scores(model, follow_batches, progress=False)
    assert ranking.passes == len(follow_batches) * (2 * 4 + 1)
    rows = sum(len(b) for b in follow_batches)
    with torch.no_grad():
        base = sum(float(logit_difference(model, b).sum()) for b in follow_batches) / rows
        with scale_heads(model, {(0, 3): 0.0}):
            blocked = sum(float(logit_difference(model, b).sum()) for b in follow_batches) / rows
    assert float(ranking.scores[0, 3]) == pytest.approx(base - blocked, abs=1e-6)
    assert float(ranking.scores.abs().max()) > 1e-4  # blocking heads does move the difference


def test_learned_mask_is_deterministic_and_reports_its_set(docs):
    """On the trained organism: an untrained model has no following circuit for the mask to break."""
    from interventions.model.loading import load_model

    model, processor = load_model(str(organism_path()))
    follow, control = split_docs(docs)
    follow_batches = list(iter_batches(model, processor, follow, 2))
    control_batches = list(iter_batches(model, processor, control, 2))
    options = LearnedMaskOptions(steps=4, init_logits=(2.0,), refine_sets=3)
    first = learned_mask_scores(model, follow_batches, control_batches, options, seed=3, progress=False)
    again = learned_mask_scores(model, follow_batches, control_batches, options, seed=3, progress=False)
    assert torch.equal(first.scores, again.scores)
    found = [tuple(h) for h in first.details["found"]]
    assert len(found) == first.details["k"] == 2 and top_heads(first.scores, 0.05) == found
    objective = Objective(model, follow_batches, control_batches)
    assert first.details["found_objective"] == pytest.approx(objective.at(found), abs=1e-5)
    assert first.details["refined_sets"] <= 3
    forwards = len(follow_batches) + len(control_batches)
    assert first.passes >= forwards * (1 + 2 * 4)  # open values + 4 forward+backward steps, + refinement


def test_top_heads_count_and_order():
    scores = torch.zeros(6, 8)
    scores[3, 5], scores[0, 1], scores[5, 7] = 3.0, 2.0, 1.0
    assert top_heads(scores, 0.05) == [(3, 5), (0, 1)]  # k = round(0.05 * 48) = 2
    assert top_heads(scores, 0.001) == [(3, 5)]  # never fewer than one head
    other = torch.zeros(6, 8)
    other[3, 5], other[2, 2] = 5.0, 4.0
    assert top_overlap(scores, other, 0.05) == 0.5
    with pytest.raises(ModarbError, match=r"must be in \(0, 1\)"):
        top_heads(scores, 1.5)


def test_rank_correlation():
    a = torch.arange(12.0).reshape(3, 4)
    assert rank_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, torch.zeros(3, 4)) is None


def test_identify_needs_follow_docs(loaded, docs):
    model, processor = loaded
    controls = [d for d in docs if d["kind"].endswith("control")]
    with pytest.raises(ModarbError, match="no follow docs"):
        identify(model, processor, controls, progress=False)


def test_gate_response_meets_the_model_the_sweep_and_amplification(loaded, follow_batches):
    model, _ = loaded
    sweep = ablation_scores(model, follow_batches, progress=False)
    heads = [(0, 3), (1, 0)]
    curves = gate_response(model, follow_batches, heads, progress=False)
    kinds = [doc["kind"] for batch in follow_batches for doc in batch.docs]
    with torch.no_grad():
        differences = torch.cat([logit_difference(model, b) for b in follow_batches]).double()
    one, zero = GATES.index(1.0), GATES.index(0.0)
    for curve, head in zip(curves, heads, strict=True):
        assert curve["head"] == list(head)
        assert curve["mean"][one] == pytest.approx(float(differences.mean()), abs=1e-5)  # gate 1: the model
        assert curve["mean"][one] - curve["mean"][zero] == pytest.approx(float(sweep.scores[head]), abs=1e-4)
        n_image = kinds.count("follow_image")
        combined = [(n_image * i + (len(kinds) - n_image) * t) / len(kinds)
                    for i, t in zip(curve["follow_image"], curve["follow_text"])]
        assert combined == pytest.approx(curve["mean"], abs=1e-4)
    assert max(abs(c["mean"][GATES.index(8.0)] - c["mean"][one]) for c in curves) > 1e-3  # amplifying moves it


def test_gate_response_needs_block_and_model_gates(loaded, follow_batches):
    with pytest.raises(ModarbError, match="include 0"):
        gate_response(loaded[0], follow_batches, [(0, 0)], gates=(0.5, 1.0), progress=False)


def test_describe_reads_a_saturated_curve():
    curve = {"head": [0, 5], "mean": [1.0, 3.0, 5.0, 6.5, 6.75, 6.0, 4.0, 2.0],
             "follow_image": [9.0] * 7 + [5.0], "follow_text": [-7.0, -3, 1, 4, 4.5, 3, 0, -1]}
    numbers = describe(curve, GATES, attribution_estimate=-0.05)
    assert numbers["exact_drop"] == pytest.approx(5.75)
    assert numbers["first_quarter_share"] == pytest.approx(0.25 / 5.75, abs=1e-3)  # flat near 1
    assert numbers["amplify_gain"] == {"mean": -4.75, "follow_image": -4.0, "follow_text": -5.5}
    assert numbers["attribution_estimate"] == -0.05


def test_curve_heads_takes_each_rankings_top_once():
    def ranking(method, best):
        scores = torch.zeros(2, 4, dtype=torch.float64)
        for rank, head in enumerate(best):
            scores[head] = 10.0 - rank
        return Ranking(method, scores, passes=1, seconds=0.0)

    rankings = {"attribution": ranking("attribution", [(1, 1), (0, 2)]),
                "ablation": ranking("ablation", [(0, 2), (1, 3)])}
    assert curve_heads(rankings, fraction=0.25, per_ranking=3) == [(0, 2), (1, 3), (1, 1)]  # k = 2 each
    assert curve_heads(rankings, fraction=0.25, per_ranking=1) == [(0, 2), (1, 1)]
    assert curve_heads(rankings, fraction=0.25, per_ranking=0) == []


def test_identify_result_and_block_spec(loaded, docs, tmp_path):
    model, processor = loaded
    result = identify(model, processor, docs, fraction=0.25, batch_size=4, progress=False,
                      learned_options=LearnedMaskOptions(steps=2))
    assert set(result.rankings) == {"attribution", "ablation", "selective", "learned"}
    summary = result.to_dict()
    assert summary["k"] == 2 and summary["n_follow_docs"] == 4 and summary["n_control_docs"] == 4
    assert set(summary["overlaps"]) == {"attribution~ablation", "attribution~selective", "attribution~learned",
                                        "ablation~selective", "ablation~learned", "selective~learned"}
    assert summary["top_overlap"] == summary["overlaps"]["attribution~ablation"]
    heads = top_heads(result.rankings["attribution"].scores, 0.25)
    spec = InterventionSpec.scaling(model_fingerprint(model), heads, 0.0,
                                    {"method": "attribution", "fraction": 0.25, "command": "test"})
    loaded_spec = InterventionSpec.load(spec.save(tmp_path / "spec.json"))
    loaded_spec.validate_against(model)
    assert loaded_spec.scales() == {head: 0.0 for head in heads}
    assert loaded_spec.positions == "all" and loaded_spec.provenance["method"] == "attribution"


@pytest.fixture
def modarb(monkeypatch):
    """`modarb` main with the identify subcommand registered (the lead wires it into cli.py)."""
    if IDENTIFY_CLI not in cli.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, IDENTIFY_CLI])
    return cli.main


def test_cli_writes_outputs(modarb, organism_folder, tmp_path, capsys):
    out = tmp_path / "identify"
    code = modarb(["identify", "--model", str(organism_folder), "--out", str(out), "--top", "0.25", "--n-items", "2",
                   "--batch-size", "4", "--learned-steps", "2", "--method", "ablation"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".modarb-output.json", "gate_response.png", "heads_ablation.png", "heads_attribution.png", "heads_learned.png",
        "heads_selective.png", "identify.json", "spec_top25.json",
    ]
    report = json.loads((out / "identify.json").read_text())
    spec = InterventionSpec.load(out / "spec_top25.json")
    assert [[h.layer, h.head] for h in spec.heads] == report["spec_heads"] == report["rankings"]["ablation"]["top"]
    assert spec.provenance["split"] == "validation" and spec.provenance["n_items"] == 2
    assert spec.provenance["command"] == report["command"] == (
        f"modarb identify --model {organism_folder} --out {out} --top 0.25 --method ablation --n-items 2 "
        "--batch-size 4 --device cpu --dtype float32 --seed 0 --learned-steps 2 --curve-heads 3")
    assert len(report["rankings"]["attribution"]["ranked"]) == 8
    assert report["rankings"]["ablation"]["heads"][:2] == report["spec_heads"]
    assert report["model"]["num_layers"] == 2 and report["model"]["num_heads"] == 4
    assert (out / "heads_learned.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = report["gate_response"]["heads"]
    assert [c["head"] for c in curves][:2] == report["rankings"]["ablation"]["top"]  # the sweep's top heads first
    for curve in curves:
        ablation = report["rankings"]["ablation"]["scores"][curve["head"][0]][curve["head"][1]]
        attribution = report["rankings"]["attribution"]["scores"][curve["head"][0]][curve["head"][1]]
        assert curve["exact_drop"] == pytest.approx(ablation, abs=1e-4)
        assert curve["attribution_estimate"] == pytest.approx(attribution, abs=1e-5)


def test_cli_reads_the_processor_and_config_once(modarb, organism_folder, tmp_path, monkeypatch):
    """The data check before the weights load reads the processor and config; loading the model reuses both
    (given a config, from_pretrained reads none)."""
    import transformers

    from interventions.model import loading

    reads = {"processor": 0, "model configs given": []}

    def counted(name, original):
        def read(*args, **kwargs):
            reads[name] += 1
            return original(*args, **kwargs)
        return read

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained",
                        counted("processor", transformers.AutoProcessor.from_pretrained))
    load_weights = loading.AutoModelForImageTextToText.from_pretrained

    def weights(*args, config=None, **kwargs):
        reads["model configs given"].append(config is not None)
        return load_weights(*args, config=config, **kwargs)

    monkeypatch.setattr(loading.AutoModelForImageTextToText, "from_pretrained", weights)
    assert modarb(["identify", "--model", str(organism_folder), "--out", str(tmp_path / "i"), "--top", "0.25",
                   "--n-items", "1", "--batch-size", "4", "--no-exact", "--no-learned", "--curve-heads", "0"]) == 0
    assert reads == {"processor": 1, "model configs given": [True]}


def test_cli_rejects_negative_curve_heads(modarb, capsys):
    assert modarb(["identify", "--curve-heads", "-1"]) == 2
    assert "--curve-heads -1 must be 0 (no curves) or more" in capsys.readouterr().err


@pytest.mark.parametrize("top", ["0", "1.5"])
def test_cli_rejects_bad_top(modarb, tmp_path, capsys, top):
    code = modarb(["identify", "--top", top, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"modarb: error: --top {float(top)} must be a fraction in (0, 1), e.g. 0.05 for the top 5% of heads"]
    assert not (tmp_path / "x").exists()


def test_cli_rejects_method_it_skips(modarb, capsys):
    assert modarb(["identify", "--method", "learned", "--no-learned"]) == 2
    assert "drop --no-learned" in capsys.readouterr().err


def test_failed_run_leaves_no_identify_json(loaded, tmp_path, monkeypatch):
    from interventions.analysis import heatmap
    from interventions.analysis.defaults import IdentifyConfig
    from interventions.analysis.identify import run_identify

    def broken_plot(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(heatmap, "plot_head_scores", broken_plot)
    model, processor = loaded
    with pytest.raises(RuntimeError, match="disk full"):
        run_identify(model, processor, tmp_path, IdentifyConfig(top=0.25, n_items=1, exact=False, learned=False),
                     progress=False)
    assert not (tmp_path / "identify.json").exists()
    assert not list(tmp_path.glob("*.tmp"))


# --- the learned mask against the exhaustive optimum, on the trained organism -----------------------
@pytest.fixture(scope="module")
def organism_objective(organism_dir):
    """The objective on 16 validation items of the bundled organism (32 follow + 32 control docs)."""
    from interventions.model.loading import load_model

    model, processor = load_model(str(organism_dir))
    follow, control = split_docs(shapes_docs(16))
    return Objective(model, list(iter_batches(model, processor, follow, 32)),
                     list(iter_batches(model, processor, control, 32)))


def _learned(objective, **options):
    seed = options.pop("seed", 0)
    model = objective.model
    ranking = learned_mask_scores(model, objective.follow_batches, objective.control_batches,
                                  LearnedMaskOptions(**options), seed=seed, progress=False, objective=objective)
    return top_heads(ranking.scores, 0.05), ranking


@pytest.mark.slow  # a science number at full settings: every one of the 1,128 pairs scored
def test_learned_mask_scores_90_percent_of_the_exhaustive_optimum(organism_objective):
    optimum = exhaustive_sets(organism_objective, k=2, progress=False)
    assert optimum["sets"] == 1128  # every pair of the organism's 48 heads
    heads, ranking = _learned(organism_objective)
    found = organism_objective.at(heads)
    assert found["value"] >= 0.9 * optimum["objective"]["value"]
    assert optimum["objective"]["following_drop"] > 0.3  # a selective block exists on these items ...
    assert found["following_drop"] > 0.3  # ... and the learned set breaks following too,
    assert max(found["visual_control_drop"], found["language_control_drop"]) < 0.05  # sparing both controls
    assert ranking.passes < optimum["passes"] / 5  # at a fraction of the exhaustive search's cost


@pytest.mark.slow  # five learned masks at full settings
def test_learned_mask_is_robust_to_its_seed_and_sparsity_weight(organism_objective):
    sparsity = LearnedMaskOptions().sparsity
    sets = {f"seed {seed}": _learned(organism_objective, seed=seed)[0] for seed in (0, 1, 2)}
    sets |= {f"sparsity x{f}": _learned(organism_objective, sparsity=sparsity * f)[0] for f in (0.5, 1.5)}
    assert len({frozenset(s) for s in sets.values()}) == 1, sets


def test_selective_sweep_scores_each_head_by_the_objective(organism_objective):
    values, terms = selective_sweep(organism_objective, progress=False)
    layer, head = divmod(int(values.argmax()), values.shape[1])
    alone = organism_objective.at([(layer, head)])
    assert float(values[layer, head]) == pytest.approx(alone["value"], abs=1e-9)
    assert terms["following_drop"][layer][head] == pytest.approx(alone["following_drop"], abs=1e-6)
    drops = [alone["visual_control_drop"], alone["language_control_drop"]]
    assert alone["value"] == pytest.approx(alone["following_drop"] - sum(max(0.0, d) for d in drops), abs=1e-9)


def test_exhaustive_search_refuses_large_models(organism_objective):
    with pytest.raises(ModarbError, match="exceeds the limit of 100"):
        exhaustive_sets(organism_objective, k=2, max_sets=100, progress=False)


def test_amplify_point_counts_restored_and_broken_items():
    from pathlib import Path

    from interventions.analysis.evaluation import Run
    from interventions.analysis.experiments import amplify_point

    def run(image, text):
        return Run("r", {}, {"mf_follow_image": dict(enumerate(image)), "mf_follow_text": dict(enumerate(text))},
                   {}, Path("x"), "cmd")

    baseline = run([1, 1, 0, 1], [0, 0, 1, 1])  # 3 failed, 5 followed
    point = amplify_point(baseline, run([1, 0, 1, 1], [1, 0, 1, 0]), alpha=2.0)
    assert (point.restored, point.failed, point.broken, point.followed) == (2, 3, 2, 5)
    assert point.restoration_rate == pytest.approx(2 / 3) and point.broken_rate == pytest.approx(2 / 5)


def test_cli_exhaustive_records_the_optimum_beside_every_ranking(modarb, organism_folder, tmp_path):
    out = tmp_path / "identify"
    assert modarb(["identify", "--model", str(organism_folder), "--out", str(out), "--top", "0.25", "--n-items", "2",
                   "--batch-size", "4", "--learned-steps", "2", "--curve-heads", "0", "--exhaustive"]) == 0
    report = json.loads((out / "identify.json").read_text())
    assert report["exhaustive"]["sets"] == 28  # every pair of the 8 heads
    by_ranking = report["objective"]["by_ranking"]
    assert set(by_ranking) == {"attribution", "ablation", "selective", "learned", "exhaustive"}
    optimum = by_ranking["exhaustive"]["value"]
    assert all(terms["value"] <= optimum + 1e-9 for terms in by_ranking.values())
    assert report["objective"]["best"] in report["rankings"]
    assert report["command"].endswith("--curve-heads 0 --exhaustive")
