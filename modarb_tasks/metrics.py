"""Per-item scores (lm-eval `process_results`) and the aggregation that is not a plain mean.

Follow tasks score every item as exactly one of `follow` / `compete` / `other` (0/1 each,
mean-aggregated). `mf_ratio` repeats `follow` under the paper's name (modality-following
ratio = mean(follow)); `mf_conditional` = follow / (follow + compete) over the task, i.e.
how often the instructed modality wins among answers that name either modality: per item it
is the (follow, compete) pair, summed by `conditional_ratio`. Controls score `acc`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modarb_tasks.matching import classify


def label_scores(label: str) -> dict:
    """The per-item metrics of a follow task for one classified answer."""
    follow, compete = int(label == "follow"), int(label == "compete")
    return {
        "follow": follow,
        "compete": compete,
        "other": int(label == "other"),
        "mf_ratio": follow,
        "mf_conditional": (follow, compete),
    }


def score_generation(doc: dict, results: Sequence[str]) -> dict:
    """`generate_until` follow task: match the generated answer against both candidate sets."""
    return label_scores(classify(results[0], doc["candidates_follow"], doc["candidates_compete"]))


def score_control(doc: dict, results: Sequence[str]) -> dict:
    """`generate_until` control task: correct when the answer names the (only) evidence's answer."""
    return {"acc": int(classify(results[0], doc["candidates_follow"], doc["candidates_compete"]) == "follow")}


def answer_choices(doc: dict) -> list[str]:
    """Loglikelihood variant's two choices: the instructed modality's answer, then the other's.

    The leading space is part of the choice (the YAML sets target_delimiter ""), because a chat
    template drops a delimiter's trailing space.
    """
    sides = ("answer_image", "answer_text")
    follow, compete = sides if doc["instruction_side"] == "image" else sides[::-1]
    return [" " + doc[follow], " " + doc[compete]]


def score_choice(doc: dict, results: Sequence[tuple[float, bool]]) -> dict:
    """Loglikelihood variant: `follow` when the follow answer is the likelier continuation."""
    (ll_follow, _), (ll_compete, _) = results
    label = "follow" if ll_follow > ll_compete else "compete" if ll_compete > ll_follow else "other"
    return label_scores(label)


def conditional_ratio(pairs: Sequence[tuple[int, int]]) -> float:
    """sum(follow) / sum(follow + compete); NaN when no answer named either modality."""
    follow = sum(f for f, _ in pairs)
    named = follow + sum(c for _, c in pairs)
    return follow / named if named else math.nan
