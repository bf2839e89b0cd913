"""The declared transformers / lm-eval range: pyproject states it, the pins sit inside it, and modarb
warns in one line, once, when an installed version is outside it."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from interventions import versions

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {r.name: r for r in requirements if r.name in versions.CHECKED}


def test_pyproject_bounds_each_checked_package_on_both_sides():
    declared = _declared()
    assert set(declared) == set(versions.CHECKED)
    for requirement in declared.values():
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & {">=", ">", "=="} and operators & {"<", "<=", "=="}, requirement


def test_the_pinned_versions_are_inside_the_declared_range():
    pins = {}
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    for name, requirement in _declared().items():
        assert requirement.specifier.contains(pins[name]), (name, pins[name], requirement)


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(versions, "_warned", [])


def _installed(monkeypatch, **found: str) -> None:
    real = metadata.version
    monkeypatch.setattr(versions.metadata, "version", lambda name: found.get(name.replace("-", "_"), real(name)))


def test_a_version_outside_the_range_is_one_warning_line_once(monkeypatch, capsys, fresh_warning):
    _installed(monkeypatch, transformers="5.99.0", lm_eval="0.4.20")
    assert [line.split(" (")[0] for line in versions.untested_versions()] == ["lm-eval 0.4.20", "transformers 5.99.0"]
    versions.warn_untested_versions()
    versions.warn_untested_versions()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("modarb: warning: lm-eval 0.4.20 (tested: ") and "transformers 5.99.0" in lines[0]


def test_versions_inside_the_range_say_nothing(monkeypatch, capsys, fresh_warning):
    _installed(monkeypatch, transformers="5.24.0", lm_eval="0.4.13")
    assert versions.untested_versions() == []
    versions.warn_untested_versions()
    assert capsys.readouterr().err == ""
