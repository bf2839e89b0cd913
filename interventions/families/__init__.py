"""Where each VLM family keeps its language decoder, declared only where a family differs.

Locating heads is generic (see locate.py); this table records the few naming differences so
they are data, not branches. A family missing here uses DEFAULT_LAYOUT, then the model's own
`get_decoder()`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyLayout:
    """How to find a family's decoder self-attention modules."""

    decoder_path: str = "model.language_model"  # dotted attribute path from the top-level model
    out_proj: str = "o_proj"  # the projection whose input columns are the per-head outputs
    attention_attrs: tuple[str, ...] = ("q_proj", "o_proj", "layer_idx", "head_dim")


DEFAULT_LAYOUT = FamilyLayout()

# model_type -> layout, only for families that differ from DEFAULT_LAYOUT.
FAMILY_LAYOUTS: dict[str, FamilyLayout] = {
    "idefics3": FamilyLayout(decoder_path="model.text_model"),
    "smolvlm": FamilyLayout(decoder_path="model.text_model"),
}


def family_layout(model_type: str) -> FamilyLayout:
    return FAMILY_LAYOUTS.get(model_type, DEFAULT_LAYOUT)
