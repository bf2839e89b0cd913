"""The shapes generator: deterministic, disjoint splits, real conflicts, well-formed prompts."""

from __future__ import annotations

import io

import pytest

from modarb_tasks.docs import TASK_KINDS, to_doc
from modarb_tasks.prompts import LAYOUTS
from modarb_tasks.shapes import QUESTION_TYPES, make_items
from modarb_tasks.shapes.questions import answer, sample_question
from modarb_tasks.shapes.scenes import Scene, SceneObject


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_same_seed_gives_byte_identical_images_and_prompts():
    first, second = make_items("test", 60, seed=3), make_items("test", 60, seed=3)
    assert [_png(a.image) for a in first] == [_png(b.image) for b in second]
    assert [to_doc(a, "follow_text")["prompt"] for a in first] == [to_doc(b, "follow_text")["prompt"] for b in second]


def test_other_seed_gives_other_items():
    assert [i.context for i in make_items("test", 20, seed=0)] != [i.context for i in make_items("test", 20, seed=1)]


def test_items_are_prefix_stable():
    short, long = make_items("validation", 10), make_items("validation", 30)
    assert [i.context for i in short] == [i.context for i in long[:10]]


def test_splits_never_share_a_scene():
    scenes = {split: {item.scene_id for item in make_items(split, 1000)} for split in ("train", "validation", "test")}
    assert not scenes["train"] & scenes["test"]
    assert not scenes["train"] & scenes["validation"]
    assert not scenes["validation"] & scenes["test"]
    # The split is a function of the scene alone, so no scene can be generated into two splits.
    for split, keys in scenes.items():
        assert all(Scene.of(_parse(key)).split() == split for key in keys)


def _parse(key: str) -> list[SceneObject]:
    objects = []
    for part in key.split("|"):
        phrase, position = part.split("@")
        size, color, shape = phrase.split(" ")
        objects.append(SceneObject(color, shape, size, position))
    return objects


def test_every_item_is_a_real_conflict_with_both_answers_in_the_candidates():
    for item in make_items("test", 200):
        assert item.answer_image != item.answer_text
        assert item.answer_image in item.candidates_image and item.answer_text in item.candidates_text
        assert not set(item.candidates_image) & set(item.candidates_text)


def test_question_types_are_balanced():
    items = make_items("test", 100)
    assert {t: sum(i.question_type == t for i in items) for t in QUESTION_TYPES} == {t: 20 for t in QUESTION_TYPES}


def test_answers_follow_the_scene():
    scene = Scene.of([
        SceneObject("red", "circle", "big", "top left"),
        SceneObject("blue", "circle", "small", "top right"),
        SceneObject("green", "square", "small", "bottom left"),
    ])
    import random

    rng = random.Random(0)
    assert answer(sample_question("color", scene, rng), scene) == "green"  # the only unique shape
    counting = sample_question("counting", scene, random.Random(1))
    assert answer(counting, scene) == str(sum(o.shape == counting.shape for o in scene.objects))
    assert answer(sample_question("attribute", scene, rng), scene) in ("big", "small")


@pytest.mark.parametrize("kind", TASK_KINDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_doc_spans_cover_exactly_their_parts(kind, layout):
    item = make_items("test", 1)[0]
    doc = to_doc(item, kind, layout)
    text, spans = doc["prompt"], doc["spans"]
    assert text[slice(*spans["question"])] == item.question
    has_context, has_image = kind != "visual_control", kind != "language_control"
    assert (text[slice(*spans["context"])].endswith(item.context)) == has_context
    assert (text[slice(*spans["image"])] == "<image>") == has_image
    assert ("<image>" in text) == has_image
    has_instruction = kind.startswith("follow")
    assert (spans["instruction"][1] > spans["instruction"][0]) == has_instruction
    if has_instruction:
        instruction = text[slice(*spans["instruction"])]
        assert ("rely on the image content" in instruction) == (kind == "follow_image")
        after = spans["instruction"][0] > spans["constraint"][0]
        assert after == (layout == "instruction_after")
    assert (spans["system"][1] > 0) == (layout == "system_prompt")
