"""The VLM families modarb knows by name: one FamilyRecord each (see record.py), in FAMILIES.

Locating heads, encoding prompts and loading processors are generic; a record states only where a
family differs (decoder path, image string, processor work-around), so those differences are
data, not branches. A model whose family has no record uses DEFAULT_LAYOUT (then the model's own
`get_decoder()`) and lm-eval's rules. To add a family: a module here with its record, listed in
FAMILIES, and its tiny recipe in interventions/testing/tiny_families/ (every
family-parametrised test then runs on it).
"""

from __future__ import annotations

from modarb_tasks.errors import ModarbError
from interventions.families import gemma3, idefics3, internvl, llava, paligemma, qwen2_vl
from interventions.families.record import DEFAULT_LAYOUT, FamilyLayout, FamilyRecord, FamilyTokens

FAMILIES: tuple[FamilyRecord, ...] = (
    *llava.RECORDS,
    *qwen2_vl.RECORDS,
    *idefics3.RECORDS,
    *paligemma.RECORDS,
    *gemma3.RECORDS,
    *internvl.RECORDS,
)
_BY_MODEL_TYPE: dict[str, FamilyRecord] = {record.model_type: record for record in FAMILIES}
FAMILY_NAMES: tuple[str, ...] = tuple(_BY_MODEL_TYPE)

# model_type -> layout, only for families that differ from DEFAULT_LAYOUT.
FAMILY_LAYOUTS: dict[str, FamilyLayout] = {r.model_type: r.layout for r in FAMILIES if r.layout != DEFAULT_LAYOUT}
FAMILY_TOKENS: dict[str, FamilyTokens] = {r.model_type: r.tokens for r in FAMILIES}

__all__ = [
    "DEFAULT_LAYOUT", "FAMILIES", "FAMILY_LAYOUTS", "FAMILY_NAMES", "FAMILY_TOKENS", "FamilyLayout", "FamilyRecord",
    "FamilyTokens", "family_layout", "family_record", "get_family", "image_prompt",
]


def family_record(model_type: str) -> FamilyRecord | None:
    """The record of `model_type`, or None for a family modarb has no record of."""
    return _BY_MODEL_TYPE.get(model_type)


def get_family(name: str) -> FamilyRecord:
    """The record named `name` (a model_type in FAMILY_NAMES); a ModarbError naming the choices otherwise."""
    if name not in _BY_MODEL_TYPE:
        raise ModarbError(f"no family record for {name!r}; choose one of {', '.join(FAMILY_NAMES)}")
    return _BY_MODEL_TYPE[name]


def family_layout(model_type: str) -> FamilyLayout:
    record = family_record(model_type)
    return record.layout if record else DEFAULT_LAYOUT


def image_prompt(name: str) -> str:
    """The text that stands for one image in a prompt of family `name` (lm-eval's `image_string`)."""
    return get_family(name).tokens.prompt_image
