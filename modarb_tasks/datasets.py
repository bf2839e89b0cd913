"""Build the `{split: datasets.Dataset}` that lm-eval's `custom_dataset` expects, once per process.

lm-eval builds every task of a group separately and each calls its builder, so the items and
the datasets are cached here: the four views of the same items (follow image/text, the two
controls) are generated once. Each doc is `modarb_tasks.docs.to_doc(item, kind, layout)`;
the `image` column is a `datasets.Image` feature, so `doc["image"]` is a PIL image (MC² images
are read from their files only when a doc is accessed). The only split is "test".
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import datasets

from modarb_tasks import mc2, shapes
from modarb_tasks.docs import ConflictItem, to_doc

EVAL_SPLIT = "test"
SHAPES_EVAL_SIZE = 200  # items in the shapes evaluation split; lm-eval's --limit cuts it further


def docs_dataset(
    items: tuple[ConflictItem, ...], kind: str, layout: str = "standard", wording: str = "paper"
) -> datasets.Dataset:
    """One task's docs as a Dataset; the image column decodes to PIL (absent for language control)."""
    dataset = datasets.Dataset.from_list([to_doc(item, kind, layout, wording) for item in items])
    if kind != "language_control":
        dataset = dataset.cast_column("image", datasets.Image())
    return dataset


@lru_cache(maxsize=None)
def shapes_items(n: int = SHAPES_EVAL_SIZE, seed: int = 0) -> tuple[ConflictItem, ...]:
    return tuple(shapes.make_items(EVAL_SPLIT, n, seed))


@lru_cache(maxsize=None)
def shapes_dataset(
    kind: str, layout: str = "standard", n: int = SHAPES_EVAL_SIZE, seed: int = 0, wording: str = "paper"
) -> dict:
    """The shapes evaluation docs (first `n` test items of `seed`) for one task kind, layout and wording."""
    return {EVAL_SPLIT: docs_dataset(shapes_items(n, seed), kind, layout, wording)}


@lru_cache(maxsize=None)
def mc2_items(json_file: Path, image_dir: Path | None, n: int | None, half: str = "test") -> tuple[ConflictItem, ...]:
    return tuple(mc2.load_items(json_file, image_dir, n, half))


def mc2_dataset(
    kind: str,
    subset_file: str | None = None,
    mc2_json: str | None = None,
    mc2_images: str | None = None,
    n: int | None = None,
    half: str = "test",
) -> dict:
    """MC² docs for one task kind: the benchmark, or the paper subset in `subset_file`; the test
    half unless told otherwise (the analysis half is for identify / flow, see modarb_tasks.mc2).

    `mc2_json` / `mc2_images` default to the environment (see modarb_tasks.mc2); the image folder
    is only required for kinds with an image.
    """
    mc2.check_half(half)
    json_file = mc2.resolve_json(mc2_json, subset_file)
    image_dir = None if kind == "language_control" else mc2.resolve_images(mc2_images)
    return _mc2_dataset(kind, json_file, image_dir, n, half)


@lru_cache(maxsize=None)
def _mc2_dataset(kind: str, json_file: Path, image_dir: Path | None, n: int | None, half: str) -> dict:
    return {EVAL_SPLIT: docs_dataset(mc2_items(json_file, image_dir, n, half), kind)}
