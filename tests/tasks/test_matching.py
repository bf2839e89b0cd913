"""Answer matching on real MC² answer pairs (conftest's mc2_dir) and on the tie-breaking rules."""

from __future__ import annotations

import json
from functools import cache

import pytest

from modarb_tasks.matching import classify, match, normalize, stem

QWEN_TEXT = "v3_following_text_open_ended_qwen_vl_2_5_7b_remaining.json"
LLAVA_VISION = "v3_following_vision_open_ended_llava-v1.5-7b_remaining.json"


@pytest.fixture(scope="module")
def records(mc2_dir):
    """file name -> the records of that MC² file (each file read once)."""
    return cache(lambda file_name: json.loads((mc2_dir / file_name).read_text(encoding="utf-8")))


# (file, item index, image_id, side, the item's answer, a different spelling from its candidate list)
REAL_PAIRS = [
    (QWEN_TEXT, 0, "000000384338", "img", "standing", "stand"),
    (QWEN_TEXT, 0, "000000384338", "text", "walking", "walk"),
    (QWEN_TEXT, 1, "000000459898", "text", "running", "run"),
    (QWEN_TEXT, 2, "000000206757", "text", "shopping", "shop"),
    (QWEN_TEXT, 3, "000000553081", "img", "eating", "eat"),
    (QWEN_TEXT, 3, "000000553081", "text", "playing", "play"),
    (QWEN_TEXT, 5, "000000156846", "img", "wood", "Wood"),
    (QWEN_TEXT, 46, "000000489899", "text", "ice", "ICE"),
    (QWEN_TEXT, 312, "000000415647", "img", "two", "2"),
    (QWEN_TEXT, 312, "000000415647", "text", "three", "3"),
    (QWEN_TEXT, 313, "000000199442", "img", "one", "1"),
    (QWEN_TEXT, 338, "000000023294", "text", "five", "5"),
    (QWEN_TEXT, 507, "000000032054", "text", "six", "6"),
    (QWEN_TEXT, 524, "000000425762", "text", "1", "one"),
    (QWEN_TEXT, 583, "000000346865", "img", "cats", "cat"),
    (QWEN_TEXT, 583, "000000346865", "text", "dogs", "dog"),
    (QWEN_TEXT, 589, "000000399666", "img", "waves", "wave"),
    (QWEN_TEXT, 702, "000000115912", "text", "rolling", "rolled"),
    (QWEN_TEXT, 717, "000000235672", "text", "reading", "read"),
    (QWEN_TEXT, 764, "000000185327", "img", "nine", "9"),
]


@pytest.mark.parametrize(("file_name", "index", "image_id", "side", "answer", "spelling"), REAL_PAIRS)
def test_real_answer_matches_its_listed_spelling(file_name, index, image_id, side, answer, spelling, records):
    record = records(file_name)[index]
    assert (record["image_id"], record[f"answer_{side}"]) == (image_id, answer)
    assert spelling in record[f"answer_{side}_candidate_list"]
    assert normalize(answer) == normalize(spelling)
    assert match(answer, [spelling]) and match(spelling, [answer])


@pytest.mark.parametrize(
    ("prediction", "label"),
    [
        ("The giraffes are standing.", "follow"),
        ("stand", "follow"),
        ("Walking", "compete"),
        ("they walk around", "compete"),
        ("standstill", "other"),  # "stand" only as a whole word
        ("sleeping", "other"),
        ("", "other"),
    ],
)
def test_classify_on_real_activity_item(prediction, label, records):
    record = records(QWEN_TEXT)[0]  # image: standing, text: walking
    follow = [record["answer_img"], *record["answer_img_candidate_list"]]
    compete = [record["answer_text"], *record["answer_text_candidate_list"]]
    assert classify(prediction, follow, compete) == label


@pytest.mark.parametrize(
    ("prediction", "label"),
    [("2", "follow"), ("Two.", "follow"), ("There are 3 dogs", "compete"), ("III", "compete"), ("4", "other")],
)
def test_classify_counting_digits_and_words(prediction, label, records):
    record = records(QWEN_TEXT)[312]  # image: two, text: three
    follow = [record["answer_img"], *record["answer_img_candidate_list"]]
    compete = [record["answer_text"], *record["answer_text_candidate_list"]]
    assert classify(prediction, follow, compete) == label


def test_candidates_listed_on_both_sides_decide_nothing(records):
    record = records(QWEN_TEXT)[555]  # letters "db" vs "sr"; both lists hold 字母 ("letter")
    follow = [record["answer_img"], *record["answer_img_candidate_list"]]
    compete = [record["answer_text"], *record["answer_text_candidate_list"]]
    assert "字母" in follow and "字母" in compete
    assert classify("字母", follow, compete) == "other"
    assert classify("字母 DB", follow, compete) == "follow"
    assert classify("Sr", follow, compete) == "compete"


def test_empty_candidate_lists_fall_back_to_the_answer(records):
    record = records(LLAVA_VISION)[0]  # walking vs fighting, no candidate lists in the LLaVA file
    assert record["answer_img_candidate_list"] == [] == record["answer_text_candidate_list"]
    assert classify("walk", [record["answer_img"]], [record["answer_text"]]) == "follow"
    assert classify("They fight.", [record["answer_img"]], [record["answer_text"]]) == "compete"


def test_first_mentioned_side_wins_and_longer_wins_at_same_position():
    assert classify("blue, not red", ["blue"], ["red"]) == "follow"
    assert classify("red, not blue", ["blue"], ["red"]) == "compete"
    assert classify("red car", ["red"], ["red car"]) == "compete"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("The dog's Three, big-red T-shirts!", ("dog", "3", "big", "red", "t", "shirt")),
        ("An apple and a pear", ("appl", "and", "pear")),
        ("twenty", ("20",)),
        ("ninety", ("90",)),
    ],
)
def test_normalize(text, words):
    assert normalize(text) == words


@pytest.mark.parametrize(
    ("inflected", "base"),
    [("running", "run"), ("sitting", "sit"), ("falling", "fall"), ("boxes", "box"), ("glasses", "glass"),
     ("puppies", "puppy"), ("horses", "horse"), ("buses", "bus"), ("skiing", "ski"), ("men", "man"),
     ("children", "child")],
)
def test_stem_maps_inflections_to_the_base_form_stem(inflected, base):
    assert stem(inflected) == stem(base)


@pytest.mark.parametrize(("left", "right"), [("red", "bed"), ("seed", "sed"), ("tennis", "tenni"), ("sled", "sl")])
def test_stem_keeps_distinct_words_apart(left, right):
    assert stem(left) != stem(right)
