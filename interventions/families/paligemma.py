"""PaliGemma (paligemma): SigLIP tower, Gemma decoder, a bidirectional prefix up to the image's end."""

from __future__ import annotations

from interventions.families.record import FamilyRecord

PALIGEMMA = FamilyRecord(model_type="paligemma")

RECORDS = (PALIGEMMA,)
