"""Turn a conflict item (one image, one conflicting context, one question) into task docs.

Both data sources (the synthetic `shapes` generator and the real MC² files) produce the same
ConflictItem; every task (follow-image, follow-text, the two controls, the positional
variants) is a view of it built here, so all tasks share one prompt layout and one schema.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from modarb_tasks.prompts import build_prompt

TASK_KINDS = ("follow_image", "follow_text", "visual_control", "language_control")


@dataclass
class ConflictItem:
    """What the image shows and what the context claims, for one question."""

    item_id: str
    source: str  # "shapes" or "mc2"
    split: str
    question_type: str
    scene_id: str  # what the image shows: the shapes scene key, or the MC² COCO image id
    context: str
    question: str
    answer_image: str
    answer_text: str
    candidates_image: list[str] = field(default_factory=list)
    candidates_text: list[str] = field(default_factory=list)
    image: Any = None  # a PIL image, or (MC²) the image file path the dataset decodes


def to_doc(item: ConflictItem, kind: str, layout: str = "standard", wording: str = "paper") -> dict:
    """The lm-eval doc of `item` for one task kind.

    Keys: the item's fields, plus `kind`, `layout`, `wording` (of the instruction, see
    modarb_tasks.prompts.INSTRUCTION_WORDINGS), `instruction_side` ("" for controls),
    `prompt` (with a literal "<image>" where the image goes), `spans` (part -> [start, end),
    [0, 0] when absent), `target`, `candidates_follow` / `candidates_compete` (the instructed
    or correct modality's candidates, and the other modality's).
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; choose one of {TASK_KINDS}")
    side = {"follow_image": "image", "follow_text": "text"}.get(kind)
    follows_image = kind in ("follow_image", "visual_control")
    prompt = build_prompt(
        question=item.question,
        context=None if kind == "visual_control" else item.context,
        instruction_side=side,
        with_image=kind != "language_control",
        layout=layout,
        wording=wording,
    )
    doc = asdict(item)
    doc["image"] = None if kind == "language_control" else item.image
    doc.update(
        kind=kind,
        layout=layout,
        wording=wording,
        instruction_side=side or "",
        prompt=prompt.text,
        spans={name: list(span) for name, span in prompt.spans.items()},
        target=item.answer_image if follows_image else item.answer_text,
        candidates_follow=_candidates(item, image_side=follows_image),
        candidates_compete=_candidates(item, image_side=not follows_image),
    )
    return doc


def _candidates(item: ConflictItem, image_side: bool) -> list[str]:
    """The answer plus its listed synonyms, answer first, without duplicates."""
    answer, extra = (
        (item.answer_image, item.candidates_image) if image_side else (item.answer_text, item.candidates_text)
    )
    return list(dict.fromkeys([answer, *extra]))
