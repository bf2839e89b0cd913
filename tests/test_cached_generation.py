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
from lm_eval.api.instance import Instance

from interventions.mechanism.spec import HeadScale, InterventionSpec, KnockoutSpec, model_fingerprint
from interventions.model.lm import ModarbVLM
from interventions.testing.random_init import IMAGE_TOKEN_ID
from interventions.testing.tiny_processors import save_tiny_family
from modarb_tasks.docs import to_doc
from modarb_tasks.shapes import make_items

STEPS = 5
FAMILIES = ("llava", "qwen2_vl")
# The model inputs generate() was given (everything else it receives is a generation setting).
GENERATION_SETTINGS = {"max_length", "stopping_criteria", "pad_token_id", "use_cache", "do_sample", "temperature",
                       "min_new_tokens", "suppress_tokens", "output_logits", "return_dict_in_generate"}


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


def _requests(vocab_size: int) -> list[Instance]:
    """Follow docs (system prompt first) of three scenes whose prompts differ in length, so the batch is
    left-padded, asking for STEPS tokens that are never an image token."""
    docs = [to_doc(item, "follow_text", "system_prompt") for item in make_items("validation", 3)]
    settings = {"until": ["<never>"], "max_gen_toks": STEPS, "min_new_tokens": STEPS,
                "suppress_tokens": list(range(IMAGE_TOKEN_ID, vocab_size))}
    return [Instance(request_type="generate_until", doc=doc, idx=0,
                     arguments=(doc["prompt"], dict(settings), {"visual": [doc["image"]]})) for doc in docs]


def _record_generation(lm: ModarbVLM, monkeypatch) -> tuple[list, list]:
    """Lists that fill with (generate kwargs, its output with logits) and the BatchState of each batch."""
    calls, states = [], []
    generate, intervention = lm.model.generate, lm._intervention

    def recording_generate(**kwargs):
        out = generate(**kwargs, output_logits=True, return_dict_in_generate=True)
        calls.append((kwargs, out))
        return out.sequences

    def recording_intervention(state):
        states.append(state)
        return intervention(state)

    monkeypatch.setattr(lm.model, "generate", recording_generate)
    monkeypatch.setattr(lm, "_intervention", recording_intervention)
    return calls, states


def _uncached_logits(lm: ModarbVLM, inputs: dict, state, generated: torch.Tensor) -> torch.Tensor:
    """[B, steps, V]: the last position's logits of a full uncached forward over the prompt and the first
    t generated tokens, for t = 0 .. steps-1, under the spec."""
    steps = []
    for t in range(generated.shape[1]):
        grown = dict(inputs, input_ids=torch.cat([inputs["input_ids"], generated[:, :t]], 1))
        for key in ("attention_mask", "token_type_ids", "mm_token_type_ids"):  # generated tokens: attended text
            if key in inputs:
                value = 1 if key == "attention_mask" else 0
                grown[key] = torch.cat([inputs[key], torch.full_like(generated[:, :t], value)], 1)
        with lm._intervention(state):
            steps.append(lm.model(**grown, use_cache=False).logits[:, -1])
    return torch.stack(steps, 1)


@pytest.mark.parametrize("kind", ["knockout", "last", "instruction"])
def test_generate_until_under_a_scoped_spec_matches_uncached_forwards_per_step(kind, tiny_folder, monkeypatch, tmp_path):
    plain = ModarbVLM(pretrained=str(tiny_folder), device="cpu", batch_size=3)
    spec = _specs(plain.model)[kind].save(tmp_path / "spec.json")
    lm = ModarbVLM(pretrained=str(tiny_folder), device="cpu", batch_size=3, spec=str(spec))
    requests = _requests(lm.model.config.get_text_config().vocab_size)
    calls, states = _record_generation(lm, monkeypatch)
    answers = lm.generate_until(requests)
    assert len(answers) == len(requests) and len(calls) == len(states) == 1
    kwargs, out = calls[0]
    inputs = {key: value for key, value in kwargs.items() if key not in GENERATION_SETTINGS}
    generated = out.sequences[:, inputs["input_ids"].shape[1]:]
    assert generated.shape[1] == STEPS and inputs["attention_mask"].min() == 0  # several tokens, a padded batch
    cached = torch.stack(out.logits, 1)
    reference = _uncached_logits(lm, inputs, states[0], generated)
    torch.testing.assert_close(cached, reference, atol=1e-4, rtol=0)
    plain_logits = _uncached_logits(plain, inputs, states[0], generated)
    assert not torch.allclose(plain_logits[:, 1:], reference[:, 1:], atol=1e-4)  # the spec acts after step 0
