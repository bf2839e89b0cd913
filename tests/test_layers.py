"""The layers import downwards only: modarb_tasks <- leaderboard, modarb_tasks <- interventions.

Each check runs in a fresh interpreter, imports every module of a package, and reads what
`sys.modules` then holds: the boundary is what really gets loaded, not what a grep finds.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

_LOADED = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


@functools.cache
def loaded_after_importing(package: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _LOADED.format(package=package)], capture_output=True, text=True,
                          check=True, timeout=300)
    return set(json.loads(done.stdout))


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


@pytest.mark.parametrize("forbidden", ["lm_eval", "interventions.cli"])
def test_the_mechanism_needs_neither_lm_eval_nor_the_cli(forbidden):
    assert _ours(loaded_after_importing("interventions.mechanism"), forbidden) == []
