"""Caption examples: the organism's alignment pre-training, as LLaVA's first stage does it.

A from-scratch model that only ever gets one answer token per prompt learns very slowly:
attention to the right image patch or context word has to be found from one token of
signal. Describing the picture gives dense supervision (every object's size, colour, shape
and position): from the image it aligns the vision features with the words, from the text
context (restated) it trains the copying heads that later retrieve answers from the context.
Scenes come from the `shapes` train split only.
"""

from __future__ import annotations

import random

from modarb_tasks.prompts import CONTEXT_PREFIX, IMAGE_PLACEHOLDER
from modarb_tasks.shapes.questions import object_sentence, scene_header
from modarb_tasks.shapes.render import render
from modarb_tasks.shapes.scenes import Scene, random_scene

CAPTION_REQUEST = "Describe the picture."
CAPTION_KINDS = ("caption_image", "caption_text")


def caption(scene: Scene) -> str:
    """The scene in the context's own wording, objects in reading order (top left first)."""
    return " ".join([scene_header(len(scene.objects))] + [object_sentence(o) for o in scene.objects])


def caption_doc(kind: str, context: str, rng: random.Random) -> dict:
    """A training doc (prompt, target, image) asking to describe a new train-split image or `context`."""
    if kind == "caption_text":
        return {"prompt": f"{CONTEXT_PREFIX}{context}\n{CAPTION_REQUEST}", "target": context, "image": None}
    if kind != "caption_image":
        raise ValueError(f"unknown caption kind {kind!r}; choose one of {CAPTION_KINDS}")
    scene = random_scene(rng)
    while scene.split() != "train":
        scene = random_scene(rng)
    return {"prompt": f"{IMAGE_PLACEHOLDER}\n{CAPTION_REQUEST}", "target": caption(scene), "image": render(scene, rng)}
