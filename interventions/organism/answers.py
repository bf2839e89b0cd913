"""A plain batched `processor` + `model.generate` loop over task docs, and its scores.

It does what lm-eval's hf-multimodal does for a `generate_until` doc (the raw prompt, left
padding, greedy decoding, stop at EOS or a newline) without the harness around it: used to
score the organism while it trains and as the benchmark's hand-written baseline loop.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch

from interventions.model.encoding import encode_docs_text
from modarb_tasks.prompts import IMAGE_PLACEHOLDER


def chat_prompt(processor, prompt: str) -> str:
    """`prompt` as one user turn of the processor's chat template, ready for the answer."""
    parts = prompt.split(IMAGE_PLACEHOLDER)
    content: list[dict] = []
    for i, text in enumerate(parts):
        if i:
            content.append({"type": "image"})
        if text:
            content.append({"type": "text", "text": text})
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


@torch.no_grad()
def generate_answers(
    model,
    processor,
    docs: Sequence[dict],
    batch_size: int = 32,
    max_new_tokens: int = 8,
    apply_chat_template: bool = False,
) -> list[str]:
    """The model's greedy answer to each doc's `prompt` (with its `image` where the prompt has one)."""
    tokenizer = processor.tokenizer
    answers: list[str] = []
    for start in range(0, len(docs), batch_size):
        batch = docs[start : start + batch_size]
        prompts = [chat_prompt(processor, d["prompt"]) if apply_chat_template else d["prompt"] for d in batch]
        inputs = encode_docs_text(processor, prompts, batch, padding_side="left")
        output = model.generate(
            **inputs.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        answers.extend(text.split("\n")[0].strip() for text in texts)
    return answers


def normalise(text: str) -> str:
    """Lower case, no surrounding punctuation or spaces: "Red." and "red" are the same answer."""
    return " ".join(text.lower().strip().strip(string.punctuation).split())


def follows(answer: str, doc: dict) -> bool:
    """Whether `answer` is one of the doc's instructed (or, for controls, correct) candidates."""
    return normalise(answer) in {normalise(c) for c in doc["candidates_follow"]}


def accuracy(answers: Sequence[str], docs: Sequence[dict]) -> float:
    """Fraction of answers that follow their doc: mf_ratio for conflict docs, accuracy for controls."""
    return sum(follows(a, d) for a, d in zip(answers, docs, strict=True)) / len(docs)
