"""hf-modarb's multi-token generation under a position-scoped spec equals uncached forwards, step by step.

Position-scoped interventions (knockout edges, head scaling on a token group or the last position)
find the absolute positions of a decode step from the KV cache the attention call receives. If they
lose that offset, every generated token after the first is treated as position 0 of the prompt and
the intervention acts on the wrong positions, silently. Here a tiny random-init model answers with
several tokens through `generate_until`, and each step's logits are compared with a full uncached
forward over the prompt and the tokens generated so far, under the same spec.
"""

from __future__ import annotations

import pytest
import torch

from generation_recording import GENERATION_SETTINGS, STEPS, generate_requests, record_generation, uncached_logits
from interventions.mechanism.spec import HeadScale, InterventionSpec, KnockoutSpec, model_fingerprint
from interventions.model.lm import ModarbVLM
from interventions.testing.tiny_processors import save_tiny_family

FAMILIES = ("llava", "qwen2_vl")


def _specs(model) -> dict[str, InterventionSpec]:
    """A knockout whose query groups include the first prompt position (the system prompt, where a lost
    offset lands), and head scalings on the answer positions and on a token group."""
    fingerprint = model_fingerprint(model)
    layers = list(range(fingerprint.num_layers))
    return {
        "knockout": InterventionSpec(model=fingerprint, knockout=KnockoutSpec(
            edges=(("system", "image"), ("context", "image")), layers=layers)),
        "last": InterventionSpec(model=fingerprint, positions="last", heads=_some_heads(layers)),
        "instruction": InterventionSpec(model=fingerprint, positions="instruction", heads=_some_heads(layers)),
    }


def _some_heads(layers: list[int]) -> tuple[HeadScale, ...]:
    """Head 0 of every layer blocked, head 1 amplified: the other heads still carry each position's context."""
    return tuple(HeadScale(layer, head, scale) for layer in layers for head, scale in ((0, 0.0), (1, 4.0)))


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_folder(request, tmp_path_factory):
    return save_tiny_family(request.param, tmp_path_factory.mktemp(request.param), attn_implementation="eager")


@pytest.mark.parametrize("kind", ["knockout", "last", "instruction"])
def test_generate_until_under_a_scoped_spec_matches_uncached_forwards_per_step(kind, tiny_folder, monkeypatch, tmp_path):
    plain = ModarbVLM(pretrained=str(tiny_folder), device="cpu", batch_size=3)
    spec = _specs(plain.model)[kind].save(tmp_path / "spec.json")
    lm = ModarbVLM(pretrained=str(tiny_folder), device="cpu", batch_size=3, spec=str(spec))
    requests = generate_requests(lm.model.config.get_text_config().vocab_size)
    calls, states = record_generation(lm, monkeypatch)
    answers = lm.generate_until(requests)
    assert len(answers) == len(requests) and len(calls) == len(states) == 1
    kwargs, out = calls[0]
    inputs = {key: value for key, value in kwargs.items() if key not in GENERATION_SETTINGS}
    generated = out.sequences[:, inputs["input_ids"].shape[1]:]
    assert generated.shape[1] == STEPS and inputs["attention_mask"].min() == 0  # several tokens, a padded batch
    cached = torch.stack(out.logits, 1)
    reference = uncached_logits(lm, inputs, states[0], generated)
    torch.testing.assert_close(cached, reference, atol=1e-4, rtol=0)
    plain_logits = uncached_logits(plain, inputs, states[0], generated)
    assert not torch.allclose(plain_logits[:, 1:], reference[:, 1:], atol=1e-4)  # the spec acts after step 0
