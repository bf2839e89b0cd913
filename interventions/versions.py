"""The transformers and lm-eval versions modarb is tested with, and a one-line warning outside them.

modarb reads generation internals of transformers (the KV cache an attention call receives) and wraps
parts of lm-eval, so a release outside the tested range can move positions or scores silently. The
range is the one pyproject.toml declares (CI runs both of its ends); a version outside it is allowed,
with a warning on stderr once per process, since it may well work.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CHECKED = ("transformers", "lm-eval")
_warned: list[bool] = []


def untested_versions() -> list[str]:
    """'NAME VERSION (tested: RANGE)' for each checked package installed outside modarb's declared range."""
    try:
        requirements = [Requirement(line) for line in metadata.requires("modarb") or ()]
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return []
    outside = []
    for requirement in requirements:
        if requirement.marker is not None or canonicalize_name(requirement.name) not in map(canonicalize_name, CHECKED):
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            outside.append(f"{requirement.name} {installed} (tested: {requirement.specifier})")
    return outside


def warn_untested_versions() -> None:
    """Print one warning line to stderr, once per process, when a checked package is outside the tested range."""
    if _warned:
        return
    _warned.append(True)
    outside = untested_versions()
    if outside:
        print(f"modarb: warning: {'; '.join(outside)} is outside the versions modarb is tested with; "
              "positions and scores may be wrong: install versions inside the tested range", file=sys.stderr)
