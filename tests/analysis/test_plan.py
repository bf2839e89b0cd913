"""The work plan (`analysis/plan.py`) against the work the analyses actually do, counted by hooks."""

from __future__ import annotations

import pytest
import torch

from interventions.analysis.defaults import LearnedMaskOptions
from interventions.analysis.batches import iter_batches
from interventions.analysis.data import shapes_docs
from interventions.analysis.identify import (
    Objective,
    ablation_scores,
    attribution_scores,
    identify,
    selective_scores,
    shortlist,
    split_docs,
)
from interventions.analysis.plan import WorkCounter, flow_work, identify_plan, measured_tokens, totals
from interventions.cli import main
from untrained_organism import save_untrained_organism

OPTIONS = LearnedMaskOptions(steps=3)


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    from interventions.model.loading import load_model

    return load_model(save_untrained_organism(tmp_path_factory.mktemp("plan_organism"), layers=2))


@pytest.fixture(scope="module")
def wide():
    """A random-init organism of 3 x 24 heads: above the full-sweep threshold, so identify shortlists."""
    from interventions.organism.model import Architecture, build_model, build_processor

    arch = Architecture(hidden=48, layers=3, heads=24, head_dim=2, intermediate=64, vision_hidden=32,
                        vision_layers=1, vision_heads=2, vision_intermediate=64)
    processor = build_processor(arch)
    return build_model(processor, arch, seed=0).eval(), processor


def _counted_and_planned(model, processor, exact_sweep):
    docs = shapes_docs(3)
    with WorkCounter(model) as counter:
        result = identify(model, processor, docs, batch_size=4, learned_options=OPTIONS, progress=False,
                          exact_sweep=exact_sweep)
    follow, control = split_docs(docs)
    text = model.config.get_text_config()
    planned = identify_plan(text.num_hidden_layers, text.num_attention_heads,
                            measured_tokens(model.config, processor, follow, 4),
                            measured_tokens(model.config, processor, control, 4), options=OPTIONS,
                            exact_sweep=exact_sweep)
    return counter, totals(planned), result


@pytest.mark.parametrize("which, exact_sweep", [("organism", "shortlist"), ("wide", "shortlist"), ("wide", "full")])
def test_plan_counts_match_counted_forwards(request, which, exact_sweep):
    model, processor = request.getfixturevalue(which)
    counter, planned, _ = _counted_and_planned(model, processor, exact_sweep)
    assert counter.forwards > 0
    assert abs(planned.forwards - counter.forwards) <= 0.05 * counter.forwards, (planned.forwards, counter.forwards)
    # forward layer-tokens (the plan's layer_tokens add 2x per backward)
    assert planned.layer_tokens >= counter.layer_tokens


@pytest.mark.parametrize("which, exact_sweep", [("organism", "shortlist"), ("wide", "shortlist"), ("wide", "full")])
def test_planned_sweeps_count_the_resumed_forwards(request, which, exact_sweep):
    """The exact sweeps resume each block from its layer: the plan's layer-tokens are the counted ones
    (exactly for a sweep of every head; a shortlist's heads are planned as spread over the depth)."""
    model, processor = request.getfixturevalue(which)
    docs = shapes_docs(3)
    follow, control = split_docs(docs)
    follow_batches, control_batches = (list(iter_batches(model, processor, d, 4)) for d in (follow, control))
    objective = Objective(model, follow_batches, control_batches)
    text = model.config.get_text_config()
    ranking = attribution_scores(model, follow_batches, progress=False)
    swept = shortlist([ranking, ranking], 0.05, exact_sweep)
    with WorkCounter(model) as counter:
        with counter.phase("ablation sweep"):
            ablation_scores(model, follow_batches, progress=False, heads=swept)
        with counter.phase("selective sweep"):
            selective_scores(objective, progress=False, heads=swept)
    planned = {p.name: p for p in identify_plan(text.num_hidden_layers, text.num_attention_heads,
                                                 measured_tokens(model.config, processor, follow, 4),
                                                 measured_tokens(model.config, processor, control, 4),
                                                 options=OPTIONS, exact_sweep=exact_sweep)}
    blocks = text.num_hidden_layers * text.num_attention_heads if swept is None else len(swept)
    follow_tokens, control_tokens = (sum(measured_tokens(model.config, processor, d, 4)) for d in (follow, control))
    full = text.num_hidden_layers * (blocks + 1) * (2 * follow_tokens + control_tokens)  # every forward, every layer
    for counted in counter.phases:
        plan = planned[counted.name]
        assert plan.forwards == counted.forwards
        if swept is None:
            assert plan.layer_tokens == counted.layer_tokens
        else:
            assert abs(plan.layer_tokens - counted.layer_tokens) <= 0.25 * counted.layer_tokens
    assert sum(c.layer_tokens for c in counter.phases) < full  # resumed: less than full forwards


def test_planned_flow_counts_the_resumed_knockouts():
    from interventions.analysis.flow import flow_sweep
    from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
    from interventions.analysis.defaults import DEFAULT_LAYOUTS
    from interventions.model.loading import load_model

    model, processor = load_model(None)
    docs = shapes_docs(2, FOLLOW_KINDS, layouts=DEFAULT_LAYOUTS)
    with WorkCounter(model) as counter:
        flow_sweep(model, processor, docs, window=3, batch_size=4)
    planned = flow_work(None, docs, 4, window=3)[0]
    assert planned.name == "flow knockouts"
    assert (planned.forwards, planned.layer_tokens) == (counter.forwards, counter.layer_tokens)


def test_shortlist_scores_the_listed_heads_as_the_full_sweep_does(wide):
    model, processor = wide
    _, _, short = _counted_and_planned(model, processor, "shortlist")
    _, _, full = _counted_and_planned(model, processor, "full")
    for method in ("ablation", "selective"):
        listed = [tuple(h) for h in short.rankings[method].details["exact_heads"]]
        scores = short.rankings[method].scores
        assert 0 < len(listed) < scores.numel()
        assert int((~scores.isnan()).sum()) == len(listed)
        for head in listed:
            assert torch.allclose(scores[head], full.rankings[method].scores[head])
        assert "exact_heads" not in full.rankings[method].details
        # the unscored heads rank last, and the JSON writes them as null
        ranked = short.rankings[method].ranked
        assert {(l, h) for l, h, _ in ranked[: len(listed)]} == set(listed)
        assert short.rankings[method].to_dict()["scores"][ranked[-1][0]][ranked[-1][1]] is None


def test_full_sweep_below_the_threshold(organism):
    model, processor = organism
    _, _, result = _counted_and_planned(model, processor, "shortlist")
    assert not result.rankings["selective"].scores.isnan().any()


@pytest.mark.parametrize("argv, says", [
    (["reproduce", "--plan", "--model", "/nonexistent/model"], "not found"),
    (["identify", "--plan", "--device", "cuda:7"], "--device cuda:7"),
    (["flow", "--plan", "--model", "/nonexistent/model"], "not found"),
])
def test_plan_answers_bad_input_in_one_line(argv, says, capsys):
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("modarb: error:") and says in lines[-1]
    assert "Traceback" not in stderr


def test_reproduce_plan_prints_every_phase_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["reproduce", "--plan", "--out", str(out), "--analysis-items", "4", "--amplify-items", "4",
                 "--limit", "4"]) == 0
    stdout = capsys.readouterr().out
    for phase in ("flow knockouts", "learned mask", "selective sweep", "amplification (validation)", "lm-eval", "total"):
        assert phase in stdout
    assert not out.exists()
