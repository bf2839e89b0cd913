"""Scenes of the `shapes` benchmark: 1–4 objects on a 2×2 grid, each with colour, shape, size.

A scene is pure data (no pixels): it is what the image shows, and — perturbed — what the
conflicting text context claims. Its canonical key decides its split, so train, validation
and test never share a scene.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 200, 20),
    "purple": (150, 50, 190),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "big")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
MAX_OBJECTS = len(POSITIONS)

SPLITS = ("train", "validation", "test")
# Scene-key hash buckets (out of 10) owned by each split: 80 / 10 / 10.
_SPLIT_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    size: str
    position: str

    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects in distinct grid cells, kept sorted by position so equal scenes compare equal."""

    objects: tuple[SceneObject, ...]

    @staticmethod
    def of(objects) -> "Scene":
        return Scene(tuple(sorted(objects, key=lambda o: POSITIONS.index(o.position))))

    def key(self) -> str:
        return "|".join(f"{o.phrase()}@{o.position}" for o in self.objects)

    def split(self) -> str:
        bucket = int(hashlib.sha256(self.key().encode()).hexdigest(), 16) % 10
        return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def random_object(rng: random.Random, position: str) -> SceneObject:
    return SceneObject(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIZES), position)


def random_scene(rng: random.Random) -> Scene:
    count = rng.randint(1, MAX_OBJECTS)
    return Scene.of(random_object(rng, p) for p in rng.sample(POSITIONS, count))


def mutate(scene: Scene, rng: random.Random) -> Scene:
    """One random edit: recolour, reshape, resize or move an object, or add/remove one."""
    objects = list(scene.objects)
    free = [p for p in POSITIONS if p not in {o.position for o in objects}]
    edits = ["color", "shape", "size"] + (["move", "add"] if free else []) + (["remove"] if len(objects) > 1 else [])
    edit = rng.choice(edits)
    if edit == "add":
        objects.append(random_object(rng, rng.choice(free)))
    elif edit == "remove":
        objects.pop(rng.randrange(len(objects)))
    else:
        i = rng.randrange(len(objects))
        obj = objects[i]
        if edit == "move":
            objects[i] = replace(obj, position=rng.choice(free))
        else:
            choices = {"color": list(COLORS), "shape": SHAPES, "size": SIZES}[edit]
            current = getattr(obj, edit)
            objects[i] = replace(obj, **{edit: rng.choice([c for c in choices if c != current])})
    return Scene.of(objects)
