"""Amplification's accounting and the pruned search over settings, on hand-made numbers."""

from __future__ import annotations

import random

import pytest

from interventions.analysis import amplify


def _fake_search(monkeypatch, bounds: list[float], drops: list[float]) -> list[int]:
    """best_of over settings 0..n-1 whose follow part gives `bounds[i]` and whose controls cost `drops[i]`;
    returns the indices whose controls were scored."""
    scored = []

    def follow_rates(objective, interventions, starts=None, broken_weight=2.0, at_last=False):
        return [{"bound": bounds[make()], "failed": 1, "followed": 1} for make in interventions]

    def control_drops(objective, interventions, follows, starts=None, at_last=False):
        scored.extend(make() for make in interventions)
        return [follow | {"value": follow["bound"] - drops[make()]} for make, follow in zip(interventions, follows)]

    monkeypatch.setattr(amplify, "follow_rates", follow_rates)
    monkeypatch.setattr(amplify, "control_drops", control_drops)
    return scored


@pytest.mark.parametrize("round_size", [1, 3, 8])
@pytest.mark.parametrize("seed", range(20))
def test_the_pruned_search_chooses_what_scoring_every_setting_chooses(monkeypatch, seed, round_size):
    monkeypatch.setattr(amplify, "CONTROL_ROUND", round_size)
    rng = random.Random(seed)
    n = 12
    bounds = [round(rng.uniform(-1, 1), 1) for _ in range(n)]  # rounded: ties happen
    drops = [round(rng.choice([0.0, 0.0, rng.uniform(0, 1)]), 1) for _ in range(n)]
    scored = _fake_search(monkeypatch, bounds, drops)
    settings = [{"i": i, "alpha": rng.choice([0.5, 1.0, 2.0])} for i in range(n)]
    tried = amplify.best_of(None, settings, [lambda i=i: i for i in range(n)])
    best = amplify.chosen(tried, tie=lambda point: -point["alpha"])
    exhaustive = max(range(n), key=lambda i: (bounds[i] - drops[i], -settings[i]["alpha"], -i))
    assert best["i"] == exhaustive and best["value"] == pytest.approx(bounds[exhaustive] - drops[exhaustive])
    for i, point in enumerate(tried):
        assert ("value" in point) == (i in scored)
        if "value" not in point:  # skipped only when its bound is below a value already found
            assert point["bound"] < best["value"]


def test_the_search_stops_at_the_first_bound_below_the_best_value(monkeypatch):
    monkeypatch.setattr(amplify, "CONTROL_ROUND", 1)
    scored = _fake_search(monkeypatch, bounds=[0.9, 0.5, 0.8, 0.1], drops=[0.0, 0.0, 0.5, 0.0])
    tried = amplify.best_of(None, [{"i": i} for i in range(4)], [lambda i=i: i for i in range(4)])
    assert scored == [0]  # 0.9 with no drop beats every other bound
    assert [point.get("value") for point in tried] == [0.9, None, None, None]


def test_a_round_scores_only_the_settings_whose_bound_still_reaches_the_best(monkeypatch):
    monkeypatch.setattr(amplify, "CONTROL_ROUND", 2)
    scored = _fake_search(monkeypatch, bounds=[0.9, 0.5, 0.8, 0.7], drops=[0.5, 0.0, 0.0, 0.0])
    tried = amplify.best_of(None, [{"i": i} for i in range(4)], [lambda i=i: i for i in range(4)])
    assert scored == [0, 2]  # round 1: 0.9 -> 0.4 and 0.8 -> 0.8; 0.7 and 0.5 are below 0.8
    assert amplify.chosen(tried, tie=lambda point: 0)["i"] == 2


def test_ties_go_to_the_tie_break_then_to_the_earlier_setting():
    tried = [{"value": 0.5, "alpha": 2.0}, {"bound": 0.9}, {"value": 0.5, "alpha": 1.0}, {"value": 0.5, "alpha": 1.0}]
    assert amplify.chosen(tried, tie=lambda point: -point["alpha"]) is tried[2]
    assert amplify.chosen(tried, tie=lambda point: 0) is tried[0]


def test_restored_and_broken_are_counted_against_the_open_model(organism_dir):
    """Gates of 1 change nothing; blocking every head of layer 0 breaks followed items and restores none
    it did not fail, and each share is its count over the open model's failed / followed docs."""
    import torch

    from interventions.analysis.batches import iter_batches
    from interventions.analysis.data import CONTROL_KINDS, FOLLOW_KINDS, DataSource, analysis_docs
    from interventions.analysis.identify import split_docs
    from interventions.analysis.objective import Objective
    from interventions.model.loading import load_model

    model, processor = load_model(None)
    docs, _ = analysis_docs(DataSource(), model.config, processor.tokenizer, 10, (*FOLLOW_KINDS, *CONTROL_KINDS))
    follow, control = split_docs(docs)
    objective = Objective(model, list(iter_batches(model, processor, follow, 16)),
                          list(iter_batches(model, processor, control, 16)))
    was = torch.cat([p >= 0.5 for p in objective.open_follow])
    plain = amplify.rates(objective, torch.ones(objective.shape))
    assert (plain["restored"], plain["broken"], plain["value"], plain["bound"]) == (0, 0, 0.0, 0.0)
    assert (plain["failed"], plain["followed"]) == (int((~was).sum()), int(was.sum()))
    gates = torch.ones(objective.shape)
    gates[0] = 0.0
    blocked = amplify.rates(objective, gates)
    assert blocked["broken"] > 0 and blocked["broken_rate"] == blocked["broken"] / blocked["followed"]
    assert blocked["failed"] == plain["failed"] > 0 and blocked["restoration_rate"] == blocked["restored"] / blocked["failed"]
    drops = sum(max(0.0, blocked[f"{kind}_drop"]) for kind in CONTROL_KINDS)
    assert blocked["value"] == pytest.approx(blocked["bound"] - drops)
    assert blocked["bound"] == pytest.approx((blocked["restoration_rate"] if blocked["failed"] else 0.0)
                                             - 2.0 * blocked["broken_rate"])
