"""Draw a scene with PIL: one object per cell of a 2×2 grid, small positional jitter.

No anti-aliasing and integer geometry, so the same scene and seed give byte-identical pixels.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from modarb_tasks.shapes.scenes import COLORS, POSITIONS, Scene

IMAGE_SIZE = 64
BACKGROUND = (240, 240, 240)
_OBJECT_PIXELS = {"small": 12, "big": 24}
_CELL = IMAGE_SIZE // 2
_MAX_JITTER = 3


def render(scene: Scene, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 2)
        side = _OBJECT_PIXELS[obj.size]
        slack = min(_MAX_JITTER, (_CELL - side) // 2 - 1)
        cx = col * _CELL + _CELL // 2 + rng.randint(-slack, slack)
        cy = row * _CELL + _CELL // 2 + rng.randint(-slack, slack)
        half = side // 2
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
        else:
            raise ValueError(f"no drawing for shape {obj.shape!r}")
    return image
