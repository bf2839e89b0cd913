"""Token groups (system, image, context, instruction, question, constraint, last) as bool masks.

Each doc records the character span of every prompt part (modarb_tasks/prompts.py). The
processor's input_ids are not a plain tokenization of that prompt: "<image>" is expanded into
many image tokens, a chat template may add role tokens, and rows are padded. So:
- image = positions holding the model's image token id;
- the text groups come from tokenizing the raw prompt with offsets (character span of each
  token) and aligning those tokens to the row's ids (longest matching runs, difflib);
  tokens the processor added (BOS, roles, image delimiters) belong to no group;
- last = the last attended position of each row (left or right padding alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from difflib import SequenceMatcher

import torch

from interventions.mechanism.locate import InterventionError
from modarb_tasks.prompts import IMAGE_PLACEHOLDER

TEXT_GROUPS = ("system", "context", "instruction", "question", "constraint")
GROUP_NAMES = ("system", "image", "context", "instruction", "question", "constraint", "last")


class EmptyGroupError(InterventionError):
    """A token group an intervention needs has no tokens in some prompt."""


def image_token_id(config) -> int:
    """The id the processor expands "<image>" into (config.image_token_id or image_token_index)."""
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    raise InterventionError(f"{type(config).__name__} names no image token (image_token_id / image_token_index)")


def token_groups(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompts: Sequence[str],
    spans: Sequence[Mapping[str, Sequence[int]]],
    tokenizer,
    image_id: int,
) -> dict[str, torch.Tensor]:
    """Bool masks [B, S] per name in GROUP_NAMES, aligned with the padded `input_ids`.

    `tokenizer` must be a fast tokenizer (offset mapping); `spans` maps part -> [start, end).
    """
    if len(prompts) != input_ids.shape[0] or len(spans) != input_ids.shape[0]:
        raise InterventionError(
            f"{len(prompts)} prompts and {len(spans)} span records for a batch of {input_ids.shape[0]} rows"
        )
    groups = {name: torch.zeros(input_ids.shape, dtype=torch.bool) for name in GROUP_NAMES}
    attended = attention_mask.bool().cpu()
    ids = input_ids.cpu()
    groups["image"] = (ids == image_id) & attended
    for row, (prompt, row_spans) in enumerate(zip(prompts, spans)):
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        positions = attended[row].nonzero().flatten().tolist()
        row_ids = [ids[row, p].item() for p in positions]
        matcher = SequenceMatcher(None, encoded["input_ids"], row_ids, autojunk=False)
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                start, end = encoded["offset_mapping"][block.a + k]
                position = positions[block.b + k]
                for name in _groups_overlapping(start, end, row_spans):
                    groups[name][row, position] = True
        if positions:
            groups["last"][row, positions[-1]] = True
    return {name: mask.to(input_ids.device) for name, mask in groups.items()}


def doc_token_groups(
    encoding, texts: Sequence[str], docs: Sequence[Mapping], tokenizer, image_id: int
) -> dict[str, torch.Tensor]:
    """Token groups of a processor batch made from `texts` (what the processor got, one per doc).

    Each doc's spans are moved from its `prompt` onto its text (see `spans_in`) and the text is
    aligned with the row's expanded ids, so image tokens, roles and delimiters stay out of the text groups.
    """
    spans = [spans_in(text, doc["prompt"], doc["spans"]) for text, doc in zip(texts, docs, strict=True)]
    return token_groups(encoding["input_ids"], encoding["attention_mask"], list(texts), spans, tokenizer, image_id)


def spans_in(text: str, prompt: str, spans: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """`spans` (part -> [start, end) in `prompt`) as positions in `text`.

    `text` is `prompt` with each "<image>" replaced by the model's image string and possibly a chat
    template around it: the pieces between images appear in it verbatim, in order (a template
    may strip a piece's outer whitespace). Parts never straddle an image, so each moves with its piece.
    """
    moved: dict[str, list[int]] = {name: [0, 0] for name in spans}
    cursor, start = 0, 0
    for piece in prompt.split(IMAGE_PLACEHOLDER):
        end = start + len(piece)
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            found = text.find(piece, cursor)
            if found < 0:
                found = text.find(stripped, cursor) - lead
                if found + lead < 0:
                    raise InterventionError(f"prompt text {stripped[:40]!r} is not in the text given to the processor")
            shift = found - start
            for name, (span_start, span_end) in spans.items():
                if span_start < span_end and start <= span_start and span_end <= end:
                    moved[name] = [span_start + shift, span_end + shift]
            cursor = found + lead + len(stripped)
        start = end + len(IMAGE_PLACEHOLDER)
    return moved


def _groups_overlapping(start: int, end: int, spans: Mapping[str, Sequence[int]]) -> Iterable[str]:
    for name in TEXT_GROUPS:
        span_start, span_end = spans.get(name, (0, 0))
        if span_start < span_end and start < span_end and end > span_start:
            yield name


def require_groups(groups: Mapping[str, torch.Tensor], names: Iterable[str], needed_by: str) -> None:
    """EmptyGroupError naming the first group in `names` that is missing or empty in some row."""
    for name in names:
        if name not in GROUP_NAMES:
            raise InterventionError(f"unknown token group {name!r}; choose one of {', '.join(GROUP_NAMES)}")
        mask = groups.get(name)
        if mask is None:
            raise EmptyGroupError(f"token group {name!r} was not supplied but {needed_by} needs it")
        empty_rows = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty_rows:
            raise EmptyGroupError(
                f"token group {name!r} is empty in prompt {empty_rows[0]} of the batch but {needed_by} needs it; "
                "use a task whose prompts contain that part"
            )
