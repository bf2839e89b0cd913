"""The `shapes` benchmark: a deterministic, seeded, versioned generator of modality conflicts.

Each item is a rendered scene (the image), a context paragraph describing a *different*
scene (the text), and a question both answer differently. Items are prefix-stable: the first
k items of a split are the same whatever n is asked for.
"""

from __future__ import annotations

import random

from modarb_tasks.docs import ConflictItem
from modarb_tasks.prompts import CONSTRAINT, CONTEXT_PREFIX, INSTRUCTIONS, LONG_SYSTEM_PROMPT
from modarb_tasks.shapes.questions import (
    NUMBER_WORDS,
    QUESTION_TYPES,
    all_question_texts,
    answer,
    candidates,
    describe,
    object_sentence,
    plural,
    sample_question,
    scene_header,
)
from modarb_tasks.shapes.render import IMAGE_SIZE, render
from modarb_tasks.shapes.scenes import (
    COLORS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES, SPLITS, Scene, SceneObject, mutate, random_scene,
)

GENERATOR_VERSION = "shapes-v1"
SPLIT_SIZES = {"train": 20000, "validation": 500, "test": 500}
_MAX_CONTEXT_TRIES = 100
_PROMPT_TEXTS = (CONTEXT_PREFIX, CONSTRAINT, LONG_SYSTEM_PROMPT, *INSTRUCTIONS.values())

__all__ = [
    "GENERATOR_VERSION", "IMAGE_SIZE", "QUESTION_TYPES", "SPLITS", "SPLIT_SIZES", "make_items", "sentences", "vocabulary", "words",
]


def make_items(split: str, n: int | None = None, seed: int = 0) -> list[ConflictItem]:
    """The first `n` items (default SPLIT_SIZES[split]) of `split` for `seed`.

    Question types cycle in QUESTION_TYPES order so every type is equally represented.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    n = SPLIT_SIZES[split] if n is None else n
    rng = random.Random(f"{GENERATOR_VERSION}/{seed}/{split}")
    items: list[ConflictItem] = []
    while len(items) < n:
        qtype = QUESTION_TYPES[len(items) % len(QUESTION_TYPES)]
        item = _try_item(rng, split, qtype, f"{GENERATOR_VERSION}-{seed}-{split}-{len(items):05d}")
        if item is not None:
            items.append(item)
    return items


def _try_item(rng: random.Random, split: str, qtype: str, item_id: str) -> ConflictItem | None:
    scene = random_scene(rng)
    if scene.split() != split:
        return None
    question = sample_question(qtype, scene, rng)
    if question is None:
        return None
    image_answer = answer(question, scene)
    context_scene = _conflicting_scene(scene, question, image_answer, rng)
    if context_scene is None:
        return None
    text_answer = answer(question, context_scene)
    return ConflictItem(
        item_id=item_id,
        source="shapes",
        split=split,
        question_type=qtype,
        scene_id=scene.key(),
        context=describe(context_scene, rng),
        question=question.text,
        answer_image=image_answer,
        answer_text=text_answer,
        candidates_image=candidates(question, image_answer),
        candidates_text=candidates(question, text_answer),
        image=render(scene, rng),
    )


def _conflicting_scene(scene: Scene, question, image_answer: str, rng: random.Random) -> Scene | None:
    """A scene one or two edits away that answers `question` differently."""
    for _ in range(_MAX_CONTEXT_TRIES):
        other = mutate(scene, rng)
        if rng.random() < 0.5:
            other = mutate(other, rng)
        text_answer = answer(question, other)
        if text_answer is not None and text_answer != image_answer:
            return other
    return None


def words() -> list[str]:
    """Every attribute, position and count word: the answers the generator can ask for."""
    return [*COLORS, *SHAPES, *map(plural, SHAPES), *SIZES, *POSITIONS, *NUMBER_WORDS, *map(str, range(len(NUMBER_WORDS)))]


def vocabulary() -> list[str]:
    """Every word the generator can emit, in sample sentences, for training a word-level tokenizer."""
    templates = [
        "The picture shows one object. A big red circle is at the top left.",
        "The picture shows two objects.",
        "What color is the circle? How many circles are there? What shape is the red object?",
        "What color is the object at the top left? What shape is the object at the top left?",
        "What size is the red circle?",
    ]
    return [*words(), *templates, *_PROMPT_TEXTS]


def sentences() -> list[str]:
    """Every context sentence and question the generator can emit, for a sentence-level tokenizer."""
    objects = [SceneObject(c, s, z, p) for z in SIZES for c in COLORS for s in SHAPES for p in POSITIONS]
    headers = [scene_header(n) for n in range(1, MAX_OBJECTS + 1)]
    return [*headers, *map(object_sentence, objects), *all_question_texts(), *_PROMPT_TEXTS]
