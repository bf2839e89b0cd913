"""Gemma 3 (gemma3): SigLIP tower pooled to a fixed token count, begin/end-of-image tokens around
the image's soft tokens; the processor expands the begin-of-image token."""

from __future__ import annotations

from interventions.families.record import FamilyRecord, FamilyTokens

GEMMA3 = FamilyRecord(
    model_type="gemma3",
    tokens=FamilyTokens(
        image="<image_soft_token>",
        with_ids={
            "boi_token": ("<start_of_image>", "boi_token_index"),
            "eoi_token": ("<end_of_image>", "eoi_token_index"),
        },
        image_string="<start_of_image>",
    ),
)

RECORDS = (GEMMA3,)
