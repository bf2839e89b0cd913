"""The layers import downwards only: modarb_tasks <- leaderboard, modarb_tasks <- interventions, and
inside interventions the order stated in interventions.LAYERS.

Each check imports every module of a package (or layer) in a fresh interpreter and reads what
`sys.modules` then holds: the boundary is what really gets loaded, not what a grep finds. One probe
process answers them all, each check in a child forked from it: checks about third-party libraries
(no torch, no lm-eval) fork before those are imported, the checks about our own modules fork after
the probe has imported torch, transformers and lm-eval once (it checks that none of ours came with them).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import interventions
from interventions import LAYERS

OURS = ("interventions", "modarb_tasks", "leaderboard")
# The probe: for each stage, import its third-party libraries, then run each check's code in a forked
# child and report (as JSON on stdout) the modules the child then holds, or its traceback.
_PROBE = """
import importlib, json, os, sys, traceback

def forked(code):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            exec(code, {})
            report = {"modules": sorted(sys.modules)}
        except BaseException:
            report = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as out:
            json.dump(report, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        report = json.load(answer)
    os.waitpid(pid, 0)
    return report

reports = {}
for libraries, checks in json.load(sys.stdin):
    for name in libraries:
        importlib.import_module(name)
    ours = sorted(m for m in sys.modules if m.split(".")[0] in %r)
    for name, code in checks.items():
        reports[name] = {"error": f"importing {libraries} loaded {ours}"} if ours else forked(code)
print(json.dumps(reports))
""" % (OURS,)
_IMPORT = "import importlib\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
_IMPORT_PACKAGE = """
import importlib, pkgutil
package = importlib.import_module({package!r})
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(module.name)
"""
_HELP = "from interventions.cli import build_parser\nbuild_parser().format_help()\n"
_HF_MODARB = """
import importlib.metadata
model_class = importlib.metadata.entry_points(group="lm_eval.models")["hf-modarb"].load()
model_class(batch_size=1, device="cpu")  # the bundled organism, through AutoProcessor
"""
LAYER_NAMES = [name for name, _ in LAYERS]
# Third-party libraries the probe imports before forking: torch's stack for the check that the mechanism needs
# no lm-eval, and what most of our modules load for the checks about our own modules.
TORCH_STACK = ("torch", "transformers", "transformers.modeling_utils", "transformers.models.auto.modeling_auto",
               "transformers.models.auto.processing_auto", "accelerate")
FOR_OUR_MODULES = (*TORCH_STACK, "lm_eval", "lm_eval.api.model", "lm_eval.evaluator", "lm_eval.tasks", "datasets",
                   "scipy.stats", "matplotlib.pyplot")


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """check name -> the modules a fresh interpreter holds after it: "package:P" imports every module of P,
    "layer:L" every module of layer L, "help" builds `modarb --help`, "hf-modarb" loads the model as lm-eval does."""
    stages = [
        ((), {"package:leaderboard": _IMPORT_PACKAGE.format(package="leaderboard"), "help": _HELP}),
        (TORCH_STACK,
         {"package:interventions.mechanism": _IMPORT_PACKAGE.format(package="interventions.mechanism")}),
        (FOR_OUR_MODULES, {"package:modarb_tasks": _IMPORT_PACKAGE.format(package="modarb_tasks"),
                           "hf-modarb": _HF_MODARB}
         | {f"layer:{layer}": _IMPORT.format(modules=[m for m in _interventions_modules() if layer_of(m) == layer])
            for layer in LAYER_NAMES}),
    ]
    done = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(stages), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: report for name, report in json.loads(done.stdout).items()}


def _modules(loaded: dict, check: str) -> set[str]:
    report = loaded[check]
    if "error" in report:
        pytest.fail(f"{check}: {report['error']}")
    return set(report["modules"])


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


def test_every_layer_has_a_module():
    assert all(any(layer_of(m) == layer for m in _interventions_modules()) for layer in LAYER_NAMES)


def test_the_layer_rule_places_each_package_where_the_order_says():
    assert [layer_of(m) for m in ("interventions", "interventions.families.llava", "interventions.organism",
                                  "interventions.organism.recipe", "interventions.model.lm",
                                  "interventions.testing.tiny_families.llava", "modarb_tasks")] == [
        "base", "base", "base", "organism", "model", "testing", None]


@pytest.mark.parametrize(("lower", "upper"), list(itertools.combinations(LAYER_NAMES, 2)),
                         ids=lambda name: name)
def test_no_layer_loads_a_later_one(lower, upper, loaded):
    """Importing every module of `lower` loads no module of `upper`, a layer after it in LAYERS."""
    upward = sorted(m for m in _modules(loaded, f"layer:{lower}") if layer_of(m) == upper)
    assert upward == [], f"importing {lower} loads {upper}: {upward}"


def _ours(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


def test_tasks_are_the_base_layer(loaded):
    assert _ours(_modules(loaded, "package:modarb_tasks"), "interventions") == []


@pytest.mark.parametrize("forbidden", ["interventions", "torch"])
def test_the_leaderboard_needs_neither_the_model_code_nor_torch(forbidden, loaded):
    assert _ours(_modules(loaded, "package:leaderboard"), forbidden) == []


def test_help_needs_no_torch(loaded):
    """`modarb --help` builds every subcommand's parser; none of them may import torch or lm-eval."""
    modules = _modules(loaded, "help")
    assert "interventions.cli" in modules
    assert _ours(modules, "torch") == [] and _ours(modules, "lm_eval") == []


def test_hf_modarb_loads_no_test_support_no_training_and_no_analysis(loaded):
    """What lm-eval loads for `--model hf-modarb` (and the organism it runs by default) is the run-time code only."""
    modules = _modules(loaded, "hf-modarb")
    assert "interventions.model.lm" in modules and "interventions.families" in modules
    for forbidden in ("interventions.testing", "interventions.analysis", "interventions.cli"):
        assert _ours(modules, forbidden) == [], forbidden
    # the organism ships as a save_pretrained folder: its package gives the path, no recipe, tokenizer or trainer
    assert [m for m in _ours(modules, "interventions.organism") if m != "interventions.organism"] == []
    assert [m for m in modules if m.startswith("interventions") and "train" in m] == []


def test_the_mechanism_needs_no_lm_eval(loaded):
    modules = _modules(loaded, "package:interventions.mechanism")
    assert "interventions.mechanism.spec" in modules and _ours(modules, "lm_eval") == []
