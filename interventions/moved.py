"""Module paths that moved in the subpackage split, kept importable (`import interventions.lm` still works).

One declarative map, old dotted path -> new one. The finder below answers an import of an old path
with the new module itself (the same object, so monkeypatching either name patches both), and
`python -m <old path>` runs the new module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

MOVED_MODULES: dict[str, str] = {
    **{f"interventions.{name}": f"interventions.mechanism.{name}"
       for name in ("locate", "heads", "knockout", "spec", "apply", "token_groups")},
    **{f"interventions.{name}": f"interventions.model.{name}"
       for name in ("lm", "harness", "loading", "processors", "encoding", "model_args", "model_files", "cache")},
    "interventions.random_init": "interventions.testing.random_init",
    "interventions.errors": "modarb_tasks.errors",
    "interventions.files": "modarb_tasks.files",
    "interventions.outdir": "modarb_tasks.outdir",
    "interventions.analysis.identify_cli": "interventions.cli.identify",
    "interventions.analysis.flow_cli": "interventions.cli.flow",
    "interventions.analysis.reproduce_cli": "interventions.cli.reproduce",
    "interventions.organism.cli": "interventions.cli.organism",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        """The target module ran when it was imported; nothing more to do."""

    def get_code(self, fullname: str):
        """For runpy (`python -m old.path`): the target's own code."""
        return importlib.util.find_spec(self.target).loader.get_code(self.target)


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
