"""An untrained organism-architecture LLaVA saved to disk: a fast stand-in for analysis tests."""

from __future__ import annotations

from pathlib import Path

from interventions.organism.model import Architecture, build_model, build_processor


def save_untrained_organism(folder: Path, layers: int) -> Path:
    """A `layers` x 4-head, 32-wide LLaVA with the organism's processor, saved with save_pretrained."""
    arch = Architecture(hidden=32, layers=layers, heads=4, intermediate=64, vision_hidden=32, vision_layers=1,
                        vision_heads=2, vision_intermediate=64)
    processor = build_processor(arch)
    build_model(processor, arch, seed=0).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
