"""Decide which modality a generated answer followed, by matching it against candidate answers.

Open-ended answers say the same thing in many spellings ("Two.", "2", "two dogs"; "standing"
vs MC²'s candidate "stand"), so both the prediction and every candidate are normalised the
same way before comparing:

- lower case; apostrophes dropped ("dog's" -> "dogs"), other punctuation -> space;
- the articles a / an / the removed;
- number words zero..twenty and the tens up to ninety -> digits ("three" -> "3");
- a light suffix stemmer for simple inflection ("standing" -> "stand", "dogs" -> "dog",
  "running" -> "run", "rolled" -> "roll", "boxes" -> "box"), plus a few irregular plurals.
  It only has to map both sides to the same form, not to produce real words.

Rule: a prediction matches a candidate when the candidate's normalised words occur as a
contiguous run of whole words in the prediction's normalised words ("the dog is standing"
matches "stand"; "standstill" does not). When both sides match, the one mentioned first
wins ("blue, not red" follows "blue"); at the same position the longer candidate wins
("red car" over "red"). Candidates that normalise identically on both sides (MC² lists the
same Chinese synonyms for both letters in some items) are dropped: they cannot tell the
modalities apart.
"""

from __future__ import annotations

import re

ARTICLES = frozenset({"a", "an", "the"})
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
NUMBER_WORDS = {word: str(value) for value, word in enumerate(_UNITS)} | {w: str(v) for w, v in _TENS.items()}
IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "people": "person",
    "mice": "mouse", "geese": "goose", "teeth": "tooth", "feet": "foot",
}
_DOUBLE_CONSONANT = re.compile(r"([bcdfgkmnprtv])\1$")
_VOWEL = re.compile(r"[aeiouy]")
LABELS = ("follow", "compete", "other")


def stem(word: str) -> str:
    """Strip one inflectional suffix (-ing, -ed, -es, -s); then final y -> i, final silent e dropped."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix in ("ing", "ed"):
        base = word[: -len(suffix)]
        if word.endswith(suffix) and not word.endswith("eed") and len(base) >= 3 and _VOWEL.search(base):
            word = _DOUBLE_CONSONANT.sub(r"\1", base)
            break
    else:
        if word.endswith("ies"):
            word = word[:-2]
        elif word.endswith(("ches", "shes", "sses", "xes", "zes")):
            word = word[:-2]
        elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
    if len(word) > 3 and word.endswith("y"):
        word = word[:-1] + "i"
    elif len(word) > 3 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]
    return word


def normalize(text: str) -> tuple[str, ...]:
    """The comparable words of `text` (see the module docstring for the steps)."""
    text = re.sub(r"['’`]", "", text.lower())
    words = re.sub(r"[^\w\s]|_", " ", text).split()
    return tuple(stem(NUMBER_WORDS.get(w, w)) for w in words if w not in ARTICLES)


def _first_match(words: tuple[str, ...], candidates: set[tuple[str, ...]]) -> tuple[int, int] | None:
    """(start, -length) of the earliest, then longest, candidate occurring in `words`; None if none."""
    hits = [
        (start, -len(cand))
        for cand in candidates
        for start in range(len(words) - len(cand) + 1)
        if words[start : start + len(cand)] == cand
    ]
    return min(hits) if hits else None


def _normalized_set(candidates: list[str]) -> set[tuple[str, ...]]:
    return {words for c in candidates if (words := normalize(c))}


def match(prediction: str, candidates: list[str]) -> bool:
    """Whether any candidate occurs, normalised, as whole words in the normalised prediction."""
    return _first_match(normalize(prediction), _normalized_set(candidates)) is not None


def classify(prediction: str, follow_candidates: list[str], compete_candidates: list[str]) -> str:
    """"follow", "compete" or "other": which side's candidates the prediction names first."""
    follow, compete = _normalized_set(follow_candidates), _normalized_set(compete_candidates)
    shared = follow & compete
    words = normalize(prediction)
    follow_hit = _first_match(words, follow - shared)
    compete_hit = _first_match(words, compete - shared)
    if follow_hit is None and compete_hit is None:
        return "other"
    if compete_hit is None or (follow_hit is not None and follow_hit < compete_hit):
        return "follow"
    return "compete"
