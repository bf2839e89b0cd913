"""Residual-stream steering is exact: alpha = 0 is the plain model, layer l's steered output is
hidden_states[l + 1] + alpha * v, and cached generate() equals uncached forwards step by step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from interventions.mechanism.apply import BatchState, answer_positions, apply_prepared, apply_spec, prepare_spec
from interventions.mechanism.heads import scale_heads
from interventions.mechanism.spec import (
    SCHEMA_V1, SCHEMA_VERSION, HeadScale, InterventionSpec, SpecError, SteeringSpec, model_fingerprint)
from interventions.mechanism.locate import InterventionError
from interventions.mechanism.steer import decoder_layers, hidden_size, read_vector, steer, vector_bytes
from interventions.testing.random_init import TINY_FAMILIES, build_tiny_model, random_batch
from interventions.model.loading import load_model

FAMILIES = ("llava", "qwen2_vl", "gemma3")


def _vector(model, seed: int = 1) -> torch.Tensor:
    return torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_decoder_layers_are_the_layers_output_hidden_states_records(family):
    """Every family's decoder layers are found, one per attention module, in order."""
    model = build_tiny_model(family)[0]
    layers = decoder_layers(model)
    assert len(layers) == model.config.get_text_config().num_hidden_layers
    assert len({id(layer) for layer in layers}) == len(layers)
    assert all(any(child is attention for child in layer.children())
               for layer, attention in zip(layers, [layer.self_attn for layer in layers]))


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_zero_is_bit_identical_to_the_plain_model(family):
    model = build_tiny_model(family)[0]
    batch = random_batch(model)
    plain = model(**batch).logits
    with steer(model, _vector(model), layers=range(model.config.get_text_config().num_hidden_layers), alpha=0.0):
        steered = model(**batch).logits
    assert torch.equal(plain, steered)


def _check_hand_computed(model, batch, positions=None, expected_mask=None) -> int:
    """Assert, layer by layer, that steering layer l adds alpha * v to hidden_states[l + 1] (only where
    `expected_mask` is set) and nothing below; returns how many layers were checked."""
    vector, alpha = _vector(model), 3.0
    plain = model(**batch, output_hidden_states=True).hidden_states
    for layer in range(len(plain) - 2):  # the last entry is after the final norm
        with steer(model, vector, [layer], alpha, positions=positions):
            steered = model(**batch, output_hidden_states=True).hidden_states
        for earlier in range(layer + 1):
            assert torch.equal(steered[earlier], plain[earlier])
        shift = alpha * vector
        if expected_mask is not None:
            shift = shift * expected_mask[..., None]
        torch.testing.assert_close(steered[layer + 1], plain[layer + 1] + shift, atol=1e-5, rtol=0)
        assert not torch.allclose(steered[layer + 2], plain[layer + 2])  # the next layers read the steered stream
    return len(plain) - 2


@pytest.mark.parametrize("family", FAMILIES)
def test_steering_layer_l_adds_alpha_v_to_hidden_states_l_plus_1(family):
    model = build_tiny_model(family)[0]
    assert _check_hand_computed(model, random_batch(model)) == model.config.get_text_config().num_hidden_layers - 1


def test_steering_on_a_mask_adds_only_there():
    model = build_tiny_model("llava")[0]
    batch = random_batch(model)
    mask = answer_positions(batch["attention_mask"])
    assert mask.sum() < mask.numel()  # some positions stay unsteered, so "only there" is tested
    assert _check_hand_computed(model, batch, positions=mask, expected_mask=mask.float()) > 0


def test_steering_the_organism_adds_alpha_v_to_hidden_states(organism_dir):
    model = load_model(organism_dir, attn_implementation="eager")[0]
    batch = random_batch(model)
    assert _check_hand_computed(model, batch) == model.config.get_text_config().num_hidden_layers - 1


@pytest.mark.parametrize("family", ("llava", "qwen2_vl"))
def test_cached_generate_under_steering_on_the_answer_positions_equals_uncached_forwards(family, greedy):
    model = build_tiny_model(family)[0]
    batch = random_batch(model)
    steps = 4
    mask = answer_positions(batch["attention_mask"], generated=steps)
    layers = [0, 1]
    with steer(model, _vector(model), layers, 4.0, positions=mask):
        cached_tokens, cached_logits = greedy(model, batch, steps, cached=True)
        tokens, logits = greedy(model, batch, steps, cached=False)
    assert torch.equal(cached_tokens, tokens)
    torch.testing.assert_close(cached_logits, logits, atol=1e-4, rtol=0)
    plain_tokens, plain_logits = greedy(model, batch, steps, cached=False)
    assert not torch.allclose(plain_logits, logits, atol=1e-3)


def test_bad_vectors_and_layers_are_refused_in_one_line(tmp_path):
    model = build_tiny_model("llava")[0]
    width = hidden_size(model)
    cases = [
        (torch.zeros(width + 1), [0], 1.0, f"has {width + 1} entries but the model's hidden size is {width}"),
        (torch.full((width,), float("nan")), [0], 1.0, "non-finite"),
        (torch.zeros(width), [99], 1.0, "layer 99 is out of range"),
        (torch.zeros(width), [0], float("inf"), "must be a finite number"),
        (torch.zeros(2, width), [0], 1.0, "one 1-D float tensor"),
    ]
    for vector, layers, alpha, message in cases:
        with pytest.raises(InterventionError, match=message):
            with steer(model, vector, layers, alpha):
                pass
    path = tmp_path / "v.safetensors"
    path.write_bytes(vector_bytes(torch.ones(width)))
    assert torch.equal(read_vector(path), torch.ones(width))
    with pytest.raises(InterventionError, match="does not match the sha256"):
        read_vector(path, expected_sha256="0" * 64)
    with pytest.raises(InterventionError, match="does not exist"):
        read_vector(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor")
    with pytest.raises(InterventionError, match="not a safetensors file"):
        read_vector(tmp_path / "junk.safetensors")


# --- steering in a spec --------------------------------------------------------------------


def _steering_spec(model, **changes) -> InterventionSpec:
    settings = dict(vector=_vector(model), layers=[1], alpha=2.5, positions="all") | changes
    return InterventionSpec(model=model_fingerprint(model), steering=SteeringSpec.of(**settings),
                            provenance={"method": "test"})


def test_a_steering_spec_round_trips_as_v2_with_its_vector_beside_it(tmp_path):
    model = build_tiny_model("llava")[0]
    spec = _steering_spec(model)
    path = spec.save(tmp_path / "steer.json")
    document = json.loads(path.read_text())
    vector_file = tmp_path / document["steering"]["vector"]["path"]
    assert document["schema"] == SCHEMA_VERSION and vector_file.name == "steer.safetensors"
    assert document["steering"]["vector"]["sha256"] == hashlib.sha256(vector_file.read_bytes()).hexdigest()
    loaded = InterventionSpec.load(path)
    assert torch.equal(loaded.steering.vector, spec.steering.vector)
    assert loaded.identity() == spec.identity()  # where the vector lies is not part of what the spec does
    other = _steering_spec(model, vector=_vector(model, seed=2))
    assert other.identity() != spec.identity()  # the vector is
    moved = tmp_path / "moved"
    moved.mkdir()
    assert InterventionSpec.load(loaded.save(moved / "again.json")).identity() == spec.identity()


def test_v1_specs_read_unchanged_and_keep_their_identity():
    """The checked-in leaderboard specs are v1; their identities are the ones the entries recorded."""
    root = Path(__file__).resolve().parents[2] / "leaderboard"
    recorded = {json.loads(entry.read_text())["intervention"]["identity"] for entry in (root / "entries").glob("*.json")}
    for path in (root / "specs").glob("*.json"):
        spec = InterventionSpec.load(path)
        assert spec.steering is None and spec.to_dict() == json.loads(path.read_text())
        assert spec.identity() in recorded


def test_a_spec_applies_steering_with_head_scaling(tmp_path):
    """One spec composes both: the same logits as the two mechanisms hooked by hand."""
    model = build_tiny_model("llava")[0]
    batch = random_batch(model)
    vector = _vector(model)
    spec = InterventionSpec(model=model_fingerprint(model), heads=(HeadScale(0, 1, 0.0),),
                            steering=SteeringSpec.of(vector, [0, 2], 3.0))
    with apply_spec(model, spec):
        composed = model(**batch).logits
    with scale_heads(model, {(0, 1): 0.0}), steer(model, vector, [0, 2], 3.0):
        by_hand = model(**batch).logits
    assert torch.equal(composed, by_hand)
    with apply_spec(model, InterventionSpec(model=model_fingerprint(model), heads=(HeadScale(0, 1, 0.0),))):
        assert not torch.allclose(model(**batch).logits, composed)


def test_steering_on_the_answer_positions_uses_the_batch_answer_mask():
    model = build_tiny_model("llava")[0]
    batch = random_batch(model)
    vector, answer = _vector(model), answer_positions(batch["attention_mask"], [3, 2])
    prepared = prepare_spec(model, _steering_spec(model, vector=vector, positions="last"))
    with apply_prepared(prepared, BatchState(answer=answer)):
        through_spec = model(**batch).logits
    with steer(model, vector, [1], 2.5, positions=answer):
        by_hand = model(**batch).logits
    assert torch.equal(through_spec, by_hand)


def _edit(path: Path, **steering) -> None:
    document = json.loads(path.read_text())
    document["steering"].update(steering)
    path.write_text(json.dumps(document))


def test_bad_steering_specs_are_one_line_errors(tmp_path):
    model = build_tiny_model("llava")[0]
    layers = model.config.get_text_config().num_hidden_layers
    path = _steering_spec(model).save(tmp_path / "spec.json")
    vector_file = tmp_path / "spec.safetensors"
    good = vector_file.read_bytes()

    vector_file.write_bytes(vector_bytes(torch.zeros(hidden_size(model))))
    with pytest.raises(SpecError, match="does not match the sha256 its spec records"):
        InterventionSpec.load(path)
    vector_file.unlink()
    with pytest.raises(SpecError, match="spec.safetensors does not exist"):
        InterventionSpec.load(path)
    vector_file.write_bytes(good)
    _edit(path, layers=[layers])
    with pytest.raises(SpecError, match=f"layer {layers} is out of range"):
        InterventionSpec.load(path)
    path.write_text(path.read_text().replace(f"[{layers}]", "[0]").replace('"alpha": 2.5', '"alpha": NaN'))
    with pytest.raises(SpecError, match="alpha nan must be a finite number"):
        InterventionSpec.load(path)

    wide = _steering_spec(build_tiny_model("llava")[0], vector=torch.ones(hidden_size(model) * 2))
    with pytest.raises(SpecError, match=f"hidden size is {hidden_size(model)}"):
        prepare_spec(model, wide)
    v1 = json.loads(path.read_text().replace("NaN", "1.0")) | {"schema": SCHEMA_V1}
    with pytest.raises(SpecError, match="steering"):
        InterventionSpec.from_dict(v1, base=tmp_path)
