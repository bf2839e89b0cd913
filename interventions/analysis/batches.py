"""Docs -> model inputs for the analyses: padded inputs, token-group masks, answer-token ids.

Every analysis (flow, identification, amplification) scores the *first answer token*: the
probability mass on the instructed modality's candidates (F) against the other modality's (C),
read at the last prompt position. This module batches docs once, the same way for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from interventions.model.encoding import encode_multimodal, encode_text, image_string
from modarb_tasks.errors import ModarbError
from interventions.mechanism.token_groups import doc_token_groups, image_token_id


@dataclass
class DocBatch:
    """One batch of docs, encoded with left padding so the last column is every row's last token."""

    docs: list[dict]
    inputs: dict[str, torch.Tensor]
    groups: dict[str, torch.Tensor]
    follow_ids: list[list[int]]  # per row: first tokens of the instructed modality's candidates
    compete_ids: list[list[int]]  # per row: first tokens of the other modality's candidates

    def __len__(self) -> int:
        return len(self.docs)


def encode_docs(model, processor, docs: Sequence[dict]) -> DocBatch:
    """Encode `docs` (lm-eval docs from modarb_tasks.docs.to_doc) for one forward pass, as hf-modarb
    encodes them (interventions.model.encoding): the model's image string, one processor call."""
    tokenizer = processor.tokenizer
    inputs, texts = encode_inputs(model.config, processor, docs)
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    groups = doc_token_groups(inputs, texts, docs, tokenizer, image_token_id(model.config))
    return DocBatch(
        docs=list(docs),
        inputs=inputs,
        groups=groups,
        follow_ids=[answer_token_ids(tokenizer, text, doc["candidates_follow"]) for text, doc in zip(texts, docs)],
        compete_ids=[answer_token_ids(tokenizer, text, doc["candidates_compete"]) for text, doc in zip(texts, docs)],
    )


def encode_inputs(config, processor, docs: Sequence[dict]) -> tuple[dict, list[str]]:
    """(model inputs on the CPU, the prompt texts as encoded) for one batch of `docs`: needs the
    config and processor only, so a work plan can measure prompt lengths before weights load."""
    tokenizer = processor.tokenizer
    images = [[load_image(doc["image"])] if doc.get("image") is not None else [] for doc in docs]
    prompts = [doc["prompt"] for doc in docs]
    if any(images):
        return encode_multimodal(processor, config.model_type, prompts, images,
                                 image_text=image_string(config, tokenizer))
    return encode_text(tokenizer, prompts), prompts  # language-control docs: hf-modarb's text-only path


def load_image(image):
    """A doc's image as PIL: MC² docs hold the file path, decoded here, one batch at a time."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image


def iter_batches(model, processor, docs: Sequence[dict], batch_size: int) -> Iterator[DocBatch]:
    for start in range(0, len(docs), batch_size):
        yield encode_docs(model, processor, docs[start : start + batch_size])


def answer_token_ids(tokenizer, prompt: str, candidates: Sequence[str]) -> list[int]:
    """The distinct first tokens the model would emit to start each candidate after `prompt`."""
    firsts = first_token_ids(tokenizer, prompt, candidates)
    if not firsts:
        raise ModarbError(
            f"no candidate in {list(candidates)!r} gives a known first token; check the tokenizer covers the answers"
        )
    return firsts


def first_token_ids(tokenizer, prompt: str, candidates: Sequence[str]) -> list[int]:
    """Like answer_token_ids, but [] where no candidate has a known first token (e.g. Chinese
    synonyms under a tokenizer without them: those candidates drop out).

    A leading token that is only whitespace (a bare "Ġ" / "▁" that BPE tokenizers emit before a
    word they have no space-joined token for) is skipped: it says nothing about the answer, and
    both modalities' candidates would share it."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    firsts: list[int] = []
    for candidate in candidates:
        full = tokenizer(f"{prompt} {candidate}", add_special_tokens=False)["input_ids"]
        if len(full) > len(prompt_ids) and full[: len(prompt_ids)] == prompt_ids:
            answer = full[len(prompt_ids) :]
            while len(answer) > 1 and not tokenizer.decode(answer[:1]).strip():
                answer = answer[1:]
            token = answer[0]
            if token not in firsts and token != tokenizer.unk_token_id:
                firsts.append(token)
    return firsts


def candidate_log_mass(log_probs: torch.Tensor, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Per row, log of the probability mass on that row's token ids: [B, V] -> [B]."""
    return torch.stack([torch.logsumexp(log_probs[row, list(row_ids)], dim=-1) for row, row_ids in enumerate(ids)])


def following_scores(last_logits: torch.Tensor, batch: DocBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit difference log p(F) - log p(C), binary-normalised P_F = p(F)/(p(F)+p(C))) per row."""
    log_probs = torch.log_softmax(last_logits.float(), dim=-1)
    follow = candidate_log_mass(log_probs, batch.follow_ids)
    compete = candidate_log_mass(log_probs, batch.compete_ids)
    difference = follow - compete
    return difference, torch.sigmoid(difference)


def last_logits(model, batch: DocBatch) -> torch.Tensor:
    """The logits at every row's last prompt position (left padding puts it in the last column)."""
    return model(**batch.inputs, use_cache=False, logits_to_keep=1).logits[:, -1]


def logit_difference(model, batch: DocBatch) -> torch.Tensor:
    """Per row, log p(F) - log p(C) of the first answer token."""
    return following_scores(last_logits(model, batch), batch)[0]
