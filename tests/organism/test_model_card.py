"""The organism's model card, rendered from its training record by interventions/organism/templates/."""

from __future__ import annotations

import json

from interventions.organism import organism_path
from interventions.organism.card import render_model_card


def test_the_shipped_card_is_the_rendering_of_the_shipped_training_record():
    record = json.loads((organism_path() / "training.json").read_text())
    assert render_model_card(record).encode() == (organism_path() / "README.md").read_bytes()


def test_a_record_naming_its_generation_and_wordings_gets_both_in_its_card():
    record = json.loads((organism_path() / "training.json").read_text())
    record["generation"], record["mix"]["wordings"] = 1, {"paper": 0.75, "rely": 0.25}
    card = render_model_card(record)
    assert "by batch: paper 75%, rely 25%.\n" in card
    assert "modarb organism train --generation 1 --out DIR --seed 0 --steps 16000\n" in card
    assert card.count("## Why this mix") == 1
