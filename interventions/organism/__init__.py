"""modarb's bundled model organism: a tiny real-architecture LLaVA trained on `shapes`.

It is the default subject of every command: an ordinary transformers LLaVA saved with
`save_pretrained`, shipped in the package (weights/), with a model card there.
"""

from __future__ import annotations

from pathlib import Path

ORGANISM_NAME = "modarb-organism"
ORGANISM_DIR = Path(__file__).resolve().parent / "weights"


def organism_path() -> Path:
    """The shipped weights folder (load it with AutoModelForImageTextToText / AutoProcessor)."""
    if not (ORGANISM_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the organism's weights are missing from {ORGANISM_DIR}; reinstall modarb or retrain them with "
            f"`modarb organism train --out {ORGANISM_DIR} --seed 0 --force`"
        )
    return ORGANISM_DIR
