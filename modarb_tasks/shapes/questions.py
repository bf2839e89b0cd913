"""MC²-like question types over a scene, and their answers.

A question is answerable on a scene only when it picks out what it asks about unambiguously
(e.g. "What color is the circle?" needs exactly one circle); `answer` returns None otherwise,
which is how the generator finds conflicting contexts that still answer the same question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from modarb_tasks.shapes.scenes import COLORS, POSITIONS, SHAPES, Scene, SceneObject

QUESTION_TYPES = ("color", "counting", "object_recognition", "positional_reasoning", "attribute")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class Question:
    qtype: str
    text: str
    color: str | None = None
    shape: str | None = None
    position: str | None = None
    asks: str | None = None  # positional_reasoning: "color" or "shape" of the object there


def plural(shape: str) -> str:
    return shape + "s"


# The wording of each question type, given what it asks about.
_TEMPLATES = {
    "color": lambda shape, **_: f"What color is the {shape}?",
    "counting": lambda shape, **_: f"How many {plural(shape)} are there?",
    "object_recognition": lambda color, **_: f"What shape is the {color} object?",
    "positional_reasoning": lambda asks, position, **_: f"What {asks} is the object at the {position}?",
    "attribute": lambda color, shape, **_: f"What size is the {color} {shape}?",
}


def _question(qtype: str, **fields) -> Question:
    return Question(qtype, _TEMPLATES[qtype](**fields), **fields)


def sample_question(qtype: str, scene: Scene, rng: random.Random) -> Question | None:
    """A question of `qtype` about `scene` that the scene answers, or None if it has none."""
    objs = scene.objects
    if qtype == "color":
        shapes = [s for s in SHAPES if sum(o.shape == s for o in objs) == 1]
        return _question(qtype, shape=rng.choice(shapes)) if shapes else None
    if qtype == "counting":
        return _question(qtype, shape=rng.choice(sorted({o.shape for o in objs})))
    if qtype == "object_recognition":
        colors = [c for c in COLORS if sum(o.color == c for o in objs) == 1]
        return _question(qtype, color=rng.choice(colors)) if colors else None
    if qtype == "positional_reasoning":
        position = rng.choice([o.position for o in objs])
        return _question(qtype, position=position, asks=rng.choice(("color", "shape")))
    if qtype == "attribute":
        pairs = sorted({(o.color, o.shape) for o in objs if sum((x.color, x.shape) == (o.color, o.shape) for x in objs) == 1})
        if not pairs:
            return None
        color, shape = rng.choice(pairs)
        return _question(qtype, color=color, shape=shape)
    raise ValueError(f"unknown question type {qtype!r}; choose one of {QUESTION_TYPES}")


def all_question_texts() -> list[str]:
    """Every question the generator can ask, in a fixed order."""
    asked = [_question("color", shape=s) for s in SHAPES] + [_question("counting", shape=s) for s in SHAPES]
    asked += [_question("object_recognition", color=c) for c in COLORS]
    asked += [_question("positional_reasoning", position=p, asks=a) for a in ("color", "shape") for p in POSITIONS]
    asked += [_question("attribute", color=c, shape=s) for c in COLORS for s in SHAPES]
    return [q.text for q in asked]


def answer(question: Question, scene: Scene) -> str | None:
    """The scene's answer to `question`, or None when the question does not fit the scene."""
    objs = scene.objects
    if question.qtype == "color":
        hits = [o for o in objs if o.shape == question.shape]
        return hits[0].color if len(hits) == 1 else None
    if question.qtype == "counting":
        count = sum(o.shape == question.shape for o in objs)
        return str(count) if count else None
    if question.qtype == "object_recognition":
        hits = [o for o in objs if o.color == question.color]
        return hits[0].shape if len(hits) == 1 else None
    if question.qtype == "positional_reasoning":
        hits = [o for o in objs if o.position == question.position]
        return getattr(hits[0], question.asks) if hits else None
    if question.qtype == "attribute":
        hits = [o for o in objs if (o.color, o.shape) == (question.color, question.shape)]
        return hits[0].size if len(hits) == 1 else None
    raise ValueError(f"unknown question type {question.qtype!r}")


def candidates(question: Question, answer_text: str) -> list[str]:
    """Accepted spellings of an answer: counts also as number words ("2", "two")."""
    if question.qtype == "counting":
        return [answer_text, NUMBER_WORDS[int(answer_text)]]
    return [answer_text]


def scene_header(count: int) -> str:
    """The context's first sentence: how many objects the picture shows."""
    return f"The picture shows {NUMBER_WORDS[count]} object{'s' if count > 1 else ''}."


def object_sentence(obj: SceneObject) -> str:
    return f"A {obj.phrase()} is at the {obj.position}."


def describe(scene: Scene, rng: random.Random) -> str:
    """The text context: every object of the scene, in a random order."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    return " ".join([scene_header(len(objs))] + [object_sentence(o) for o in objs])
