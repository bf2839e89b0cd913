"""Processors that load offline and without torchvision: `load_processor`, what hf-modarb and the analyses call.

Without torchvision, transformers has no video processors, and every processor whose `__init__`
takes a `video_processor` (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, SmolVLM, InternVL) fails its
argument check while being built, even for images only. `load_processor` tries AutoProcessor
first and falls back, only for that failure, to the images-only subclass the family's record
names (interventions/families/).

The tiny models' processors (tiny_tokenizer, build_tiny_processor, save_tiny_family ...) are test
support and live in interventions.testing.tiny_processors; their old names here still resolve,
on first use, so importing this module loads no test support.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoProcessor, ProcessorMixin
from transformers.utils import cached_file

from modarb_tasks.errors import ModarbError
from interventions.families import FAMILIES
from interventions.families.images_only import stock_name

# Importable from here as before: the family tokens and the images-only classes (defined with their records).
from interventions.families import FAMILY_TOKENS, FamilyTokens, image_prompt  # noqa: F401
from interventions.families.idefics3 import SmolVLMProcessorImagesOnly  # noqa: F401
from interventions.families.internvl import InternVLProcessorImagesOnly  # noqa: F401
from interventions.families.llava import LlavaOnevisionProcessorImagesOnly  # noqa: F401
from interventions.families.qwen2_vl import Qwen2_5_VLProcessorImagesOnly, Qwen2VLProcessorImagesOnly  # noqa: F401

# stock processor class name -> its images-only subclass, from the family records
IMAGES_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    stock_name(record.images_only_processor): record.images_only_processor
    for record in FAMILIES
    if record.images_only_processor
}


def load_processor(path: str | Path, trust_remote_code: bool = False, **kwargs) -> ProcessorMixin:
    """AutoProcessor.from_pretrained(path), or, where that fails only because this machine has
    no video processors (no torchvision) or SmolVLM's video-only `num2words`, the images-only
    subclass of the folder's processor class."""
    try:
        return AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)
    except (AttributeError, ImportError, OSError, ValueError) as error:
        videos_only = _is_missing_video_support(error)
        class_name = _saved_processor_class(str(path), kwargs.get("revision")) if videos_only else None
        if class_name not in IMAGES_ONLY_PROCESSORS:
            if "requires the Torchvision library" in str(error):
                raise ModarbError(f"the processor of {path} needs torchvision ({str(error).split()[0]}), which is not "
                                  "installed; install the torchvision build that matches your torch") from None
            raise
    return IMAGES_ONLY_PROCESSORS[class_name].from_pretrained(str(path), **kwargs)


# A folder with a video processor config fails on torchvision, one without on the missing file;
# a stock processor built by hand fails on the video mapping; SmolVLM's __init__ asks for num2words.
_NO_VIDEO_SIGNS = (
    "VideoProcessor requires the Torchvision library",
    "Can't load video processor",
    "VIDEO_PROCESSOR_MAPPING",
    "num2words",
)


def _is_missing_video_support(error: Exception) -> bool:
    return any(sign in str(error) for sign in _NO_VIDEO_SIGNS)


def _saved_processor_class(source: str, revision: str | None) -> str | None:
    """The processor class a local folder or cached hub model names (nothing is downloaded)."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        config = cached_file(source, name, revision=revision, _raise_exceptions_for_missing_entries=False,
                             _raise_exceptions_for_connection_errors=False)
        if config and (value := json.loads(Path(config).read_text()).get("processor_class")):
            return value
    return None
