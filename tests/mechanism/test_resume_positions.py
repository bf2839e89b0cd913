"""Replays from a position (mechanism/resume.py): a knockout of queries from position p on recomputes
only positions p.. of the layers from its window, reading earlier keys and values from the clean forward."""

from __future__ import annotations

import pytest
import torch

from interventions.analysis.flow import first_position, flow_sweep
from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
from interventions.analysis.defaults import DEFAULT_LAYOUTS
from interventions.analysis.plan import WorkCounter
from interventions.mechanism import resume
from interventions.mechanism.knockout import knockout
from interventions.mechanism.resume import full_last_logits, resumable
from interventions.testing.random_init import LAYERS, random_batch

EVERY_LAYER = list(range(LAYERS))


def _after_the_image(model, inputs):
    """(queries: the text after the image block, keys: the image) and where those queries start."""
    image = inputs["input_ids"] == model.config.image_token_id
    positions = torch.arange(image.shape[1])
    last_image = int(torch.where(image, positions, -1).max())
    text_after = inputs["attention_mask"].bool() & (positions > last_image)
    return (text_after, image), first_position(text_after)


@pytest.mark.parametrize("batch_size", [1, 2], ids=["unpadded", "left-padded"])
def test_a_knockout_replayed_from_its_first_query_equals_the_full_forward_on_every_family(tiny, batch_size):
    inputs = random_batch(tiny, batch_size)
    (text_after, image), position = _after_the_image(tiny, inputs)
    last = inputs["input_ids"].shape[1] - 1
    last_query = (torch.arange(last + 1) == last).expand_as(image)
    clean = resumable(tiny, inputs, EVERY_LAYER, positions=[position, last])
    assert torch.equal(clean.logits, full_last_logits(tiny, inputs))  # keeping the keys and values changes nothing
    assert clean.past and clean.replays_from(0, position) and clean.replays_from(LAYERS - 1, last)
    changed = 0
    for start in EVERY_LAYER:
        for queries, first in ((text_after, position), (last_query, last)):
            with knockout(tiny, [(queries, image)], list(range(start, min(start + 2, LAYERS)))):
                replayed, full = clean.last_logits(start, first), full_last_logits(tiny, inputs)
            assert (replayed - full).abs().max() <= 1e-6 * max(1.0, float(full.abs().max())), (start, first)
            changed += not torch.equal(full, clean.logits)
    assert changed >= LAYERS  # the knockouts did something


def test_a_replay_from_a_position_runs_only_the_positions_from_it(tiny):
    inputs = random_batch(tiny, 2)
    _, position = _after_the_image(tiny, inputs)
    width = inputs["input_ids"].shape[1]
    clean = resumable(tiny, inputs, [1], positions=[position])
    with WorkCounter(tiny) as counter:
        with counter.phase("from layer 1, position p"):
            clean.last_logits(1, position)
        with counter.phase("from layer 1, every position"):
            clean.last_logits(1)
    assert [(p.forwards, p.layer_tokens) for p in counter.phases] == [
        (1, (LAYERS - 1) * 2 * (width - position)), (1, (LAYERS - 1) * 2 * width)]


def test_keys_and_values_are_kept_only_within_half_the_budget(tiny):
    inputs = random_batch(tiny, 2)
    _, position = _after_the_image(tiny, inputs)
    past = resume.key_value_bytes(tiny, *inputs["input_ids"].shape)
    assert resumable(tiny, inputs, [1], budget=2 * past - 1, positions=[position]).past == ()
    kept = resumable(tiny, inputs, [1], budget=2 * past + 10**6, positions=[position])
    assert len(kept.past) == LAYERS
    assert sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kept.past) == past
    assert resumable(tiny, inputs, [1], positions=[0]).past == ()  # nothing to skip: no keys kept


def test_a_layer_argument_a_replay_cannot_cut_falls_back_to_every_position(tiny, monkeypatch):
    inputs = random_batch(tiny, 2)
    edge, position = _after_the_image(tiny, inputs)
    layers = resume.decoder_layers(tiny)[0]
    extra = torch.zeros(inputs["input_ids"].shape)
    handles = [layer.register_forward_pre_hook(lambda module, args, kwargs: (args, {**kwargs, "extra": extra}),
                                               with_kwargs=True) for layer in layers]
    try:
        clean = resumable(tiny, inputs, EVERY_LAYER, positions=[position])
        assert clean.past == () and not clean.replays_from(0, position)
        with knockout(tiny, [edge], [2]):
            assert (clean.last_logits(2, position) - full_last_logits(tiny, inputs)).abs().max() <= 1e-6
    finally:
        for handle in handles:
            handle.remove()


def test_a_prompt_that_attends_both_ways_replays_every_position():
    """PaliGemma's prefix (token type 0) attends both ways: a position before p sees p.., so nothing is skipped."""
    from interventions.testing.random_init import build_tiny_model

    model = build_tiny_model("paligemma", "sdpa")[0]
    inputs = random_batch(model, 2)
    inputs["token_type_ids"] = torch.zeros_like(inputs["token_type_ids"])  # the whole prompt is prefix
    (text_after, image), position = _after_the_image(model, inputs)
    clean = resumable(model, inputs, EVERY_LAYER, positions=[position])
    assert clean.past == () and not clean.replays_from(0, position)  # nothing kept that no replay can use
    with knockout(model, [(text_after, image)], [1, 2]):
        replayed, full = clean.last_logits(1, position), full_last_logits(model, inputs)
    assert not torch.equal(full, clean.logits) and (replayed - full).abs().max() <= 1e-6


@pytest.fixture(scope="module")
def organism():
    from interventions.model.loading import load_model

    return load_model(None)


def test_flow_from_positions_equals_flow_over_every_position_and_does_less_work(organism, monkeypatch):
    model, processor = organism
    docs = shapes_docs(2, FOLLOW_KINDS, layouts=DEFAULT_LAYOUTS)
    with WorkCounter(model) as counter:
        with counter.phase("from positions"):
            cut = flow_sweep(model, processor, docs, window=3, batch_size=4)
        monkeypatch.setattr(resume, "key_value_bytes", lambda *args: 2**62)  # keys and values never fit
        with counter.phase("every position"):
            every = flow_sweep(model, processor, docs, window=3, batch_size=4)
    for ours, theirs in zip(cut.parts, every.parts):
        assert ours.effects.keys() == theirs.effects.keys() and ours.effects
        assert torch.equal(ours.baseline, theirs.baseline)
        for edge, effect in ours.effects.items():
            assert (effect - theirs.effects[edge]).abs().max() <= 1e-5, edge  # P_F, from float32 logits
    cut_work, every_work = counter.phases
    assert cut_work.forwards == every_work.forwards + sum(1 for _ in every.parts)  # one checking replay per batch
    assert cut_work.layer_tokens < 0.6 * every_work.layer_tokens
