"""The tiny recipes (interventions/testing/tiny_families/) pair one to one with the family records."""

from __future__ import annotations

from collections import Counter

from interventions.families import FAMILIES
from interventions.testing.tiny_families import RECIPE_MODULES, TINY_MODELS


def test_every_family_record_has_exactly_one_tiny_recipe_and_every_recipe_a_record():
    named = Counter(name for module in RECIPE_MODULES for name in module.RECIPES)
    assert [name for name, count in named.items() if count > 1] == []
    assert sorted(named) == sorted(TINY_MODELS) == sorted(record.model_type for record in FAMILIES)


def test_each_recipe_builds_a_config_of_its_family():
    for model_type, recipe in TINY_MODELS.items():
        assert recipe.config().model_type == model_type
