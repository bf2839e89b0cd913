"""The base of the images-only processors: stock processors that load without a video processor.

Without torchvision, transformers has no video processors, and every processor whose `__init__`
takes a `video_processor` (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, SmolVLM, InternVL) fails its
argument check while being built, even for images only. A family's record names its subclass
(images work, videos are unsupported); it saves under the stock class name, so a machine with
torchvision loads the same folder with AutoProcessor.
"""

from __future__ import annotations

import json
from pathlib import Path


class ImagesOnly:
    """Mixin: saves under the stock processor's name (the class after this mixin)."""

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["processor_class"] = stock_name(type(self))
        return output

    def save_pretrained(self, save_directory, **kwargs):
        saved = super().save_pretrained(save_directory, **kwargs)
        tokenizer_config = Path(save_directory) / "tokenizer_config.json"  # ProcessorMixin wrote our name there
        config = json.loads(tokenizer_config.read_text())
        config["processor_class"] = stock_name(type(self))
        tokenizer_config.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return saved


def stock_name(cls: type) -> str:
    """The stock processor class name an images-only subclass stands for."""
    return cls.__mro__[2].__name__
