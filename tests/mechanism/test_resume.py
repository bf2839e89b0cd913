"""Resumed forwards (mechanism/resume.py) against full forwards: the same logits, less decoder work."""

from __future__ import annotations

import pytest
import torch

from interventions.analysis.batches import iter_batches
from interventions.analysis.flow import flow_sweep
from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
from interventions.analysis.identify import identify, split_docs, top_heads
from interventions.analysis.plan import WorkCounter
from interventions.analysis.defaults import DEFAULT_LAYOUTS
from interventions.mechanism import resume
from interventions.mechanism.heads import scale_heads
from interventions.mechanism.knockout import knockout
from interventions.mechanism.resume import full_last_logits, resumable
from interventions.testing.random_init import HEADS, LAYERS, build_from_config, random_batch, tiny_config
from interventions.analysis.defaults import LearnedMaskOptions

EVERY_LAYER = list(range(LAYERS))


def _image_and_text(model, inputs):
    image = inputs["input_ids"] == model.config.image_token_id
    return image, inputs["attention_mask"].bool() & ~image


def _interventions(model, inputs):
    """(start layer, context manager factory) for a head block at every layer and knockout windows
    starting at every layer (text queries cannot see image keys)."""
    image, text = _image_and_text(model, inputs)
    layers = model.config.get_text_config().num_hidden_layers
    blocks = [(layer, lambda layer=layer: scale_heads(model, {(layer, HEADS - 1): 0.0, (layer, 0): 0.0}))
              for layer in range(layers)]
    windows = [(start, lambda start=start: knockout(model, [(text, image)], list(range(start, min(start + 2, layers)))))
               for start in range(layers)]
    return blocks + windows


@pytest.mark.parametrize("batch_size", [1, 2], ids=["unpadded", "left-padded"])
def test_resumed_forwards_equal_full_forwards_on_every_family(tiny, batch_size):
    inputs = random_batch(tiny, batch_size)
    clean = resumable(tiny, inputs, EVERY_LAYER)
    assert sorted(clean.kept) == EVERY_LAYER  # every family's decoder replays: nothing was left to full forwards
    assert torch.equal(clean.logits, full_last_logits(tiny, inputs))
    changed = 0
    for start, intervention in _interventions(tiny, inputs):
        with intervention():
            resumed, full = clean.last_logits(start), full_last_logits(tiny, inputs)
        assert (resumed - full).abs().max() <= 1e-6, start
        changed += not torch.equal(full, clean.logits)
    assert changed >= LAYERS  # the interventions did something


@pytest.fixture(scope="module")
def organism():
    from interventions.model.loading import load_model

    return load_model(None)


def test_resumed_forwards_equal_full_forwards_on_the_organism(organism):
    model, processor = organism
    docs = shapes_docs(3, FOLLOW_KINDS, layouts=["standard"])
    batch = next(iter_batches(model, processor, docs, batch_size=4))
    assert not batch.inputs["attention_mask"].all()  # real prompts of different lengths: left-padded
    layers = model.config.get_text_config().num_hidden_layers
    clean = resumable(model, batch.inputs, range(layers))
    assert sorted(clean.kept) == list(range(layers))
    image, instruction = batch.groups["image"], batch.groups["instruction"]
    for start in range(layers):
        for intervention in (scale_heads(model, {(start, 1): 0.0}), knockout(model, [(instruction, image)], [start])):
            with intervention:
                assert (clean.last_logits(start) - full_last_logits(model, batch.inputs)).abs().max() <= 1e-6


@pytest.mark.parametrize("family, change", [
    ("gemma3", {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"], "sliding_window": 4}),
    ("paligemma", {"final_logit_softcapping": 2.0}),
], ids=["per-layer-masks", "soft-capped-logits"])
def test_layer_specific_arguments_and_a_soft_capped_head_are_replayed(family, change):
    """Sliding and full layers get different masks (each kept call replays its own); PaliGemma soft-caps its logits."""
    config = tiny_config(family)
    for key, value in change.items():
        setattr(config.get_text_config(), key, value)
    torch.manual_seed(0)
    model = build_from_config(config, attn_implementation="sdpa")
    inputs = random_batch(model, 2)
    clean = resumable(model, inputs, EVERY_LAYER)
    assert sorted(clean.kept) == EVERY_LAYER
    for start, intervention in _interventions(model, inputs):
        with intervention():
            assert (clean.last_logits(start) - full_last_logits(model, inputs)).abs().max() <= 1e-6


def test_a_resumed_forward_runs_only_the_layers_from_its_start(tiny):
    inputs = random_batch(tiny, 2)
    clean = resumable(tiny, inputs, [1, 2])
    tokens = inputs["input_ids"].numel()
    with WorkCounter(tiny) as counter:
        with counter.phase("from 2"):
            clean.last_logits(2)
        with counter.phase("from 1"):
            clean.last_logits(1)
        with counter.phase("below the kept layers: full"):
            clean.last_logits(0)
    assert [(p.forwards, p.layer_tokens) for p in counter.phases] == [
        (1, (LAYERS - 2) * tokens), (1, (LAYERS - 1) * tokens), (1, LAYERS * tokens)]


def test_the_memory_budget_keeps_what_fits_and_falls_back(tiny):
    inputs = random_batch(tiny, 2)
    layer_bytes = inputs["input_ids"].numel() * tiny.config.get_text_config().hidden_size * tiny.dtype.itemsize
    assert resumable(tiny, inputs, EVERY_LAYER, budget=layer_bytes - 1).kept == {}
    one = resumable(tiny, inputs, [1, 2], budget=layer_bytes)
    assert list(one.kept) == [1]
    assert [one.resume_layer(start) for start in (0, 1, 2)] == [None, 1, 1]  # the nearest kept layer below
    with scale_heads(tiny, {(2, 0): 0.0}):
        assert (one.last_logits(2) - full_last_logits(tiny, inputs)).abs().max() <= 1e-6
    assert resume.RESUME_BUDGET_BYTES >= 28 * 16 * 550 * 3584 * 2  # Qwen2.5-VL-7B: 28 layers, 16 x 550 tokens, bf16


def test_on_a_gpu_the_budget_is_a_share_of_its_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (60 * 2**30, 80 * 2**30))
    assert resume.memory_budget(torch.device("cuda", 0)) == 15 * 2**30
    assert resume.memory_budget(torch.device("cpu")) == resume.RESUME_BUDGET_BYTES


def test_a_decoder_that_changes_the_hidden_states_between_layers_is_not_replayed(tiny):
    inputs = random_batch(tiny, 2)
    layers = resume.decoder_layers(tiny)[0]
    handle = layers[1].register_forward_pre_hook(lambda module, args: (args[0] + 1.0, *args[1:]))
    try:
        clean = resumable(tiny, inputs, EVERY_LAYER)
        assert clean.kept == {}
        assert torch.equal(clean.last_logits(2), full_last_logits(tiny, inputs))
    finally:
        handle.remove()


@pytest.fixture
def no_resume(monkeypatch):
    """Every intervention as a full forward (nothing kept), the analyses' behaviour before resuming."""
    monkeypatch.setattr(resume, "RESUME_BUDGET_BYTES", 0)


def _identify(model, processor):
    return identify(model, processor, shapes_docs(2), batch_size=3, learned_options=LearnedMaskOptions(steps=2),
                    progress=False, response_heads=0)


def test_identify_is_unchanged_and_cheaper_when_resumed(organism, monkeypatch):
    model, processor = organism
    with WorkCounter(model) as counter:
        with counter.phase("resumed"):
            resumed = _identify(model, processor)
        monkeypatch.setattr(resume, "RESUME_BUDGET_BYTES", 0)
        with counter.phase("full"):
            full = _identify(model, processor)
    for method in ("ablation", "selective"):
        assert torch.allclose(resumed.rankings[method].scores, full.rankings[method].scores, rtol=0, atol=1e-9)
        assert top_heads(resumed.rankings[method].scores, 0.05) == top_heads(full.rankings[method].scores, 0.05)
    assert resumed.objective["by_ranking"] == full.objective["by_ranking"]
    resumed_work, full_work = counter.phases
    assert resumed_work.forwards == full_work.forwards
    assert resumed_work.layer_tokens < 0.8 * full_work.layer_tokens


def test_flow_is_unchanged_when_resumed(organism, no_resume):
    model, processor = organism
    docs = shapes_docs(2, FOLLOW_KINDS, layouts=DEFAULT_LAYOUTS)
    full = flow_sweep(model, processor, docs, window=3, batch_size=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resume, "RESUME_BUDGET_BYTES", 2**30)
        resumed = flow_sweep(model, processor, docs, window=3, batch_size=4)
    for ours, theirs in zip(resumed.parts, full.parts):
        assert ours.effects.keys() == theirs.effects.keys() and ours.effects
        for edge, effect in ours.effects.items():  # replays from a position round as attention over fewer queries
            assert (effect - theirs.effects[edge]).abs().max() <= 1e-5


def test_the_exhaustive_search_is_unchanged_when_resumed(organism, monkeypatch):
    from interventions.analysis.objective import Objective
    from interventions.analysis.selective import exhaustive_sets

    model, processor = organism
    follow, control = split_docs(shapes_docs(1))
    objective = Objective(model, list(iter_batches(model, processor, follow, 4)),
                          list(iter_batches(model, processor, control, 4)))
    resumed = exhaustive_sets(objective, 1, progress=False)
    monkeypatch.setattr(resume, "RESUME_BUDGET_BYTES", 0)
    assert exhaustive_sets(objective, 1, progress=False) == resumed
    assert resumed["objective"] == objective.at([tuple(h) for h in resumed["heads"]])
