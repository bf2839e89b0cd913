"""The functions the task YAMLs name with `!function utils.<name>`.

lm-eval calls `custom_dataset(**metadata, **dataset_kwargs)`: `dataset_kwargs` (set in each
YAML) says which view of the data the task is; `metadata` is the YAML's own plus whatever the
user passed with `--metadata` (and, through `simple_evaluate`, the model args), so unknown
keys are ignored. User knobs read from `--metadata`:

- shapes tasks: `shapes_n` (items, default SHAPES_EVAL_SIZE), `shapes_seed` (default 0);
- mc2 tasks: `mc2_json`, `mc2_images` (see modarb_tasks.mc2; environment variables
  MODARB_MC2_JSON / MODARB_MC2_IMAGES otherwise), `mc2_n` (first n items only), `mc2_half`
  ("test", the default: the half never used to choose heads; "analysis"; "all").
"""

from __future__ import annotations

from modarb_tasks.errors import ModarbError
from modarb_tasks.datasets import SHAPES_EVAL_SIZE, mc2_dataset, shapes_dataset
from modarb_tasks.metrics import answer_choices, conditional_ratio, score_choice, score_control, score_generation

__all__ = ["answer_choices", "conditional_ratio", "mc2", "score_choice", "score_control", "score_generation", "shapes"]


def shapes(
    kind: str,
    layout: str = "standard",
    wording: str = "paper",
    shapes_n: int | None = None,
    shapes_seed: int = 0,
    **_metadata,
) -> dict:
    n = SHAPES_EVAL_SIZE if shapes_n is None else _whole("shapes_n", shapes_n, 1)
    return shapes_dataset(kind, layout, n, _whole("shapes_seed", shapes_seed, 0), wording)


def mc2(
    kind: str,
    mc2_file: str | None = None,
    mc2_json: str | None = None,
    mc2_images: str | None = None,
    mc2_n: int | None = None,
    mc2_half: str = "test",
    **_metadata,
) -> dict:
    return mc2_dataset(kind, mc2_file, mc2_json, mc2_images, None if mc2_n is None else _whole("mc2_n", mc2_n, 1),
                       mc2_half)


def _whole(key: str, value, least: int) -> int:
    """A --metadata count: a whole number >= least, else one line naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit() \
            or int(value) < least:
        raise ModarbError(f"--metadata {key}={value!r} must be a whole number >= {least}, e.g. "
                          f"--metadata '{{\"{key}\": {max(least, 8)}}}'")
    return int(value)
