"""The layers import downwards only: modarb_tasks <- leaderboard, modarb_tasks <- interventions, and
inside interventions the order stated in interventions.LAYERS.

Each check runs in a fresh interpreter, imports every module of a package (or layer), and reads what
`sys.modules` then holds: the boundary is what really gets loaded, not what a grep finds.
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import interventions
from interventions import LAYERS

_LOADED = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""
_LOADED_MODULES = """
import importlib, json, sys
for name in {modules!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""
LAYER_NAMES = [name for name, _ in LAYERS]


@functools.cache
def loaded_after_importing(package: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _LOADED.format(package=package)], capture_output=True, text=True,
                          check=True, timeout=300)
    return set(json.loads(done.stdout))


def layer_of(module: str) -> str | None:
    """The layer LAYERS puts `module` in (the longest matching name decides); None outside interventions."""
    matches = [(len(pattern), layer) for layer, patterns in LAYERS for pattern in patterns
               if (module.startswith(pattern[:-1]) if pattern.endswith(".*")
                   else module == pattern or module.startswith(pattern + "."))]
    return max(matches)[1] if matches else None


def _interventions_modules() -> list[str]:
    """Every module of the interventions package, from its files (`__main__` would run the command)."""
    root = Path(interventions.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] != "__main__":
            names.append(".".join(parts))
    return names


@functools.cache
def loaded_after_importing_layer(layer: str) -> set[str]:
    modules = [m for m in _interventions_modules() if layer_of(m) == layer]
    assert modules, f"layer {layer} has no module"
    done = subprocess.run([sys.executable, "-c", _LOADED_MODULES.format(modules=modules)], capture_output=True,
                          text=True, check=True, timeout=300)
    return set(json.loads(done.stdout))


def test_the_layer_rule_places_each_package_where_the_order_says():
    assert [layer_of(m) for m in ("interventions", "interventions.families.llava", "interventions.organism",
                                  "interventions.organism.recipe", "interventions.model.lm",
                                  "interventions.testing.tiny_families.llava", "modarb_tasks")] == [
        "base", "base", "base", "organism", "model", "testing", None]


@pytest.mark.parametrize(("lower", "upper"), list(itertools.combinations(LAYER_NAMES, 2)),
                         ids=lambda name: name)
def test_no_layer_loads_a_later_one(lower, upper):
    """Importing every module of `lower` loads no module of `upper`, a layer after it in LAYERS."""
    upward = sorted(m for m in loaded_after_importing_layer(lower) if layer_of(m) == upper)
    assert upward == [], f"importing {lower} loads {upper}: {upward}"


def _ours(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


def test_tasks_are_the_base_layer():
    assert _ours(loaded_after_importing("modarb_tasks"), "interventions") == []


@pytest.mark.parametrize("forbidden", ["interventions", "torch"])
def test_the_leaderboard_needs_neither_the_model_code_nor_torch(forbidden):
    assert _ours(loaded_after_importing("leaderboard"), forbidden) == []


def test_help_needs_no_torch():
    """`modarb --help` builds every subcommand's parser; none of them may import torch or lm-eval."""
    done = subprocess.run([sys.executable, "-c", "import json, sys\nfrom interventions.cli import build_parser\n"
                           "build_parser().format_help()\nprint(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True, timeout=300)
    loaded = set(json.loads(done.stdout))
    assert _ours(loaded, "torch") == [] and _ours(loaded, "lm_eval") == []


_HF_MODARB_LOADED = """
import importlib.metadata, json, sys
model_class = importlib.metadata.entry_points(group="lm_eval.models")["hf-modarb"].load()
model_class(batch_size=1, device="cpu")  # the bundled organism, through AutoProcessor
print(json.dumps(sorted(sys.modules)))
"""


def test_hf_modarb_loads_no_test_support_no_training_and_no_analysis():
    """What lm-eval loads for `--model hf-modarb` (and the organism it runs by default) is the run-time code only."""
    done = subprocess.run([sys.executable, "-c", _HF_MODARB_LOADED], capture_output=True, text=True, check=True,
                          timeout=300)
    loaded = set(json.loads(done.stdout))
    assert "interventions.model.lm" in loaded and "interventions.families" in loaded
    for forbidden in ("interventions.testing", "interventions.analysis", "interventions.cli"):
        assert _ours(loaded, forbidden) == [], forbidden
    # the organism ships as a save_pretrained folder: its package gives the path, no recipe, tokenizer or trainer
    assert [m for m in _ours(loaded, "interventions.organism") if m != "interventions.organism"] == []
    assert [m for m in loaded if m.startswith("interventions") and "train" in m] == []


def test_the_mechanism_needs_no_lm_eval():
    assert _ours(loaded_after_importing("interventions.mechanism"), "lm_eval") == []
