"""The tiny random-init recipe (TinyModel) of every family, one module per family as in interventions/families/.

The family records hold only what the run-time code reads; what the test suite builds a tiny
model, its inputs and its processor from lives here, in TINY_MODELS (model_type -> recipe).
"""

from __future__ import annotations

from interventions.testing.tiny_families import gemma3, idefics3, internvl, llava, paligemma, qwen2_vl
from interventions.testing.tiny_families.recipe import TinyModel

# Each module's recipes, in the order of interventions.families.FAMILIES.
RECIPE_MODULES = (llava, qwen2_vl, idefics3, paligemma, gemma3, internvl)
TINY_MODELS: dict[str, TinyModel] = {
    name: recipe for module in RECIPE_MODULES for name, recipe in module.RECIPES.items()
}

__all__ = ["RECIPE_MODULES", "TINY_MODELS", "TinyModel"]
