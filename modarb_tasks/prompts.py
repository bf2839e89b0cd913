"""Prompt layout of a modality-conflict question, with the character span of every part.

The analyses (knockout, flow, identification) need to know which tokens are the image, the
context, the instruction, ... so every prompt is assembled here from named parts and the
span of each part is recorded while assembling, never recovered by searching the text.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
CONTEXT_PREFIX = "Text Context: "

# The paper's wording (Instruction Anchor, arXiv 2602.03677; MC² question1/2/3).
INSTRUCTIONS = {
    "image": (
        "In case there is an inconsistency between the Text Context and the input image content, "
        "you must rely on the image content rather than the text context."
    ),
    "text": (
        "In case there is an inconsistency between the Text Context and the input image content, "
        "you must rely on the text context rather than the input image content."
    ),
}

# Other wordings of the same instruction. "paper" is the paper's; the "trained" ones are what a
# model may see in training besides it (the organism's recipe draws from TRAINED_WORDINGS); "held_out"
# says the same with the same words in a new sentence and is never trained on: the
# `modality_following_paraphrase` tasks ask whether a model follows the meaning, not the string.
INSTRUCTION_WORDINGS = {
    "paper": INSTRUCTIONS,
    "trust": {
        "image": "Trust the image content, not the text context.",
        "text": "Trust the text context, not the image content.",
    },
    "disagree": {
        "image": "If the image and the text context disagree, answer from the image.",
        "text": "If the image and the text context disagree, answer from the text context.",
    },
    "rely": {
        "image": "Rely on the image content; do not rely on the text context.",
        "text": "Rely on the text context; do not rely on the image content.",
    },
    "held_out": {
        "image": "Answer from the image content; do not trust the text context.",
        "text": "Answer from the text context; do not trust the image content.",
    },
}
# Between them the trained wordings use every word of the held-out one ("rely" brings "do not"
# and the semicolon), so a model that reads the words can follow the new sentence.
TRAINED_WORDINGS = ("paper", "trust", "disagree", "rely")
CONSTRAINT = "Answer the question using a single word or phrase."

# Positional control: a long system prompt placed before everything else.
LONG_SYSTEM_PROMPT = (
    "You are a careful visual assistant. You look at the picture and read the text that the user "
    "gives you. You answer every question with a single word or phrase, without explanation. "
    "When the user tells you which source of evidence to trust, you follow that instruction."
)

PART_NAMES = ("system", "image", "context", "instruction", "question", "constraint")
EMPTY_SPAN = (0, 0)

# Order of the parts in each layout variant (the paper's default and its positional controls).
LAYOUTS = {
    "standard": ("system", "image", "context", "instruction", "question", "constraint"),
    "instruction_after": ("system", "image", "context", "question", "constraint", "instruction"),
    "system_prompt": ("system", "image", "context", "instruction", "question", "constraint"),
}


@dataclass(frozen=True)
class Prompt:
    """An assembled prompt and the half-open character span of each part (EMPTY_SPAN if absent)."""

    text: str
    spans: dict[str, tuple[int, int]]


def build_prompt(
    *,
    question: str,
    context: str | None = None,
    instruction_side: str | None = None,
    with_image: bool = True,
    with_constraint: bool = True,
    layout: str = "standard",
    system: str | None = None,
    wording: str = "paper",
) -> Prompt:
    """Join the present parts with newlines in the layout's order and record their spans.

    `instruction_side` is "image", "text" or None (no modality instruction: controls).
    The `system_prompt` layout uses LONG_SYSTEM_PROMPT unless `system` is given; `wording` names
    the instruction's wording in INSTRUCTION_WORDINGS.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    if instruction_side not in (None, "image", "text"):
        raise ValueError(f"instruction_side must be 'image', 'text' or None, not {instruction_side!r}")
    if wording not in INSTRUCTION_WORDINGS:
        raise ValueError(f"unknown instruction wording {wording!r}; choose one of {sorted(INSTRUCTION_WORDINGS)}")
    if layout == "system_prompt" and system is None:
        system = LONG_SYSTEM_PROMPT
    pieces = {
        "system": system,
        "image": IMAGE_PLACEHOLDER if with_image else None,
        "context": CONTEXT_PREFIX + context if context else None,
        "instruction": INSTRUCTION_WORDINGS[wording][instruction_side] if instruction_side else None,
        "question": question,
        "constraint": CONSTRAINT if with_constraint else None,
    }
    text = ""
    spans = {name: EMPTY_SPAN for name in PART_NAMES}
    for name in LAYOUTS[layout]:
        piece = pieces[name]
        if not piece:
            continue
        if text:
            text += "\n"
        spans[name] = (len(text), len(text) + len(piece))
        text += piece
    return Prompt(text=text, spans=spans)
