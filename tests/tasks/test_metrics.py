"""Per-item scores and their aggregation give exactly the expected numbers."""

from __future__ import annotations

import math

import pytest

from modarb_tasks.docs import ConflictItem, to_doc
from modarb_tasks.metrics import answer_choices, conditional_ratio, score_choice, score_control, score_generation


def _item(answer_image: str, answer_text: str, **extra) -> ConflictItem:
    return ConflictItem(
        item_id="hand-0", source="shapes", split="test", question_type="color", scene_id="s0",
        context="A blue circle.", question="What color is the circle?",
        answer_image=answer_image, answer_text=answer_text, **extra,
    )


def _mean(values):
    return sum(values) / len(values)


def test_hand_made_predictions_give_exact_follow_compete_other_and_ratios():
    # follow-image docs: image says red, text says blue (counting item: 2 vs 3)
    color = to_doc(_item("red", "blue"), "follow_image")
    count = to_doc(_item("2", "3", candidates_image=["two"], candidates_text=["three"]), "follow_image")
    predictions = [
        (color, "Red."),        # follow
        (color, "red circle"),  # follow
        (count, "two"),         # follow
        (color, "blue"),        # compete
        (count, "3"),           # compete
        (color, "green"),       # other
    ]
    scores = [score_generation(doc, [text]) for doc, text in predictions]
    assert [s["follow"] for s in scores] == [1, 1, 1, 0, 0, 0]
    assert [s["compete"] for s in scores] == [0, 0, 0, 1, 1, 0]
    assert [s["other"] for s in scores] == [0, 0, 0, 0, 0, 1]
    assert _mean([s["follow"] for s in scores]) == 0.5
    assert _mean([s["compete"] for s in scores]) == pytest.approx(1 / 3)
    assert _mean([s["other"] for s in scores]) == pytest.approx(1 / 6)
    assert _mean([s["mf_ratio"] for s in scores]) == 0.5
    assert conditional_ratio([s["mf_conditional"] for s in scores]) == pytest.approx(3 / 5)


def test_follow_text_swaps_the_sides():
    doc = to_doc(_item("red", "blue"), "follow_text")
    assert score_generation(doc, ["blue"])["follow"] == 1
    assert score_generation(doc, ["red"])["compete"] == 1


def test_conditional_ratio_is_nan_when_nothing_named_either_side():
    assert math.isnan(conditional_ratio([(0, 0), (0, 0)]))
    assert conditional_ratio([(0, 1), (0, 0)]) == 0.0


def test_control_accuracy():
    visual = to_doc(_item("red", "blue"), "visual_control")
    language = to_doc(_item("red", "blue"), "language_control")
    assert [score_control(visual, [p])["acc"] for p in ("red", "blue", "Red, I think")] == [1, 0, 1]
    assert [score_control(language, [p])["acc"] for p in ("red", "blue")] == [0, 1]


def test_loglikelihood_choices_and_scores():
    image_doc = to_doc(_item("red", "blue"), "follow_image")
    text_doc = to_doc(_item("red", "blue"), "follow_text")
    assert answer_choices(image_doc) == [" red", " blue"]
    assert answer_choices(text_doc) == [" blue", " red"]
    assert score_choice(image_doc, [(-1.0, True), (-3.0, False)]) == {
        "follow": 1, "compete": 0, "other": 0, "mf_ratio": 1, "mf_conditional": (1, 0)}
    assert score_choice(image_doc, [(-3.0, False), (-1.0, True)])["compete"] == 1
    assert score_choice(image_doc, [(-2.0, False), (-2.0, False)])["other"] == 1
