"""Recording hf-modarb's cached generation and replaying it as uncached forwards: the reference that
position-scoped interventions (head scales, knockout, steering) are checked against, step by step."""

from __future__ import annotations

import torch
from lm_eval.api.instance import Instance

from interventions.model.lm import ModarbVLM
from interventions.testing.random_init import IMAGE_TOKEN_ID
from modarb_tasks.docs import to_doc
from modarb_tasks.shapes import make_items

STEPS = 5
# The model inputs generate() was given (everything else it receives is a generation setting).
GENERATION_SETTINGS = {"max_length", "stopping_criteria", "pad_token_id", "use_cache", "do_sample", "temperature",
                       "min_new_tokens", "suppress_tokens", "output_logits", "return_dict_in_generate"}



def generate_requests(vocab_size: int) -> list[Instance]:
    """Follow docs (system prompt first) of three scenes whose prompts differ in length, so the batch is
    left-padded, asking for STEPS tokens that are never an image token."""
    docs = [to_doc(item, "follow_text", "system_prompt") for item in make_items("validation", 3)]
    settings = {"until": ["<never>"], "max_gen_toks": STEPS, "min_new_tokens": STEPS,
                "suppress_tokens": list(range(IMAGE_TOKEN_ID, vocab_size))}
    return [Instance(request_type="generate_until", doc=doc, idx=0,
                     arguments=(doc["prompt"], dict(settings), {"visual": [doc["image"]]})) for doc in docs]


def record_generation(lm: ModarbVLM, monkeypatch) -> tuple[list, list]:
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


def uncached_logits(lm: ModarbVLM, inputs: dict, state, generated: torch.Tensor) -> torch.Tensor:
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
