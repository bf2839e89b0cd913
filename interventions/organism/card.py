"""The organism's model card (README.md in its weights folder), written from the training record.

Every number in the card comes from the record `recipe.train` returns, so a retrained folder
carries a card that describes exactly that training run; the prose lives in templates/
(card.md.j2, with each generation's "why this mix" in why_v1.md.j2 and why_v2.md.j2).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import jinja2

from interventions.organism import ORGANISM_NAME
from modarb_tasks.files import write_text

TEMPLATES = Path(__file__).parent / "templates"


def _shares(mapping: Mapping[str, float], spec: str) -> str:
    """`name share, name share, …` with each share in Python's format `spec` (e.g. ".0%")."""
    return ", ".join(f"{name} {format(share, spec)}" for name, share in mapping.items())


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["num"] = format  # {{ x|num(".3f") }}: Python's own format spec
    environment.filters["shares"] = _shares
    return environment


def render_model_card(record: dict) -> str:
    """The card of a `recipe.train` record (or a training.json), as text."""
    arch = record["architecture"]
    return _environment().get_template("card.md.j2").render(
        name=ORGANISM_NAME, record=record, arch=arch, mix=record["mix"], schedule=record["schedule"],
        image_tokens=(64 // arch["patch"]) ** 2,  # 64×64 images
        paraphrased=sorted(k for k in record.get("scores", {}) if "@" in k),
    )


def write_model_card(out_dir: str | Path, record: dict) -> Path:
    """Write README.md into `out_dir` from a `recipe.train` record; return its path."""
    return write_text(Path(out_dir) / "README.md", render_model_card(record))
