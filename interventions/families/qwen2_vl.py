"""Qwen2-VL (qwen2_vl) and Qwen2.5-VL (qwen2_5_vl): images sized by pixel count, merged patches,
`<|image_pad|>` between vision start/end tokens that the multimodal RoPE reads."""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

from interventions.families.images_only import ImagesOnly
from interventions.families.record import FamilyRecord, FamilyTokens


class Qwen2VLProcessorImagesOnly(ImagesOnly, Qwen2VLProcessor):
    """Qwen2VLProcessor without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The stock __init__ passes video_processor=None on; ProcessorMixin pairs positional
        # arguments with this class's attributes (image_processor, tokenizer) and drops it.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLProcessorImagesOnly(ImagesOnly, Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


_TOKENS = FamilyTokens(
    image="<|image_pad|>",
    with_ids={
        "video_token": ("<|video_pad|>", "video_token_id"),
        "vision_start_token": ("<|vision_start|>", "vision_start_token_id"),
        "vision_end_token": ("<|vision_end|>", "vision_end_token_id"),
    },
    image_string="<|vision_start|><|image_pad|><|vision_end|>",
)
QWEN2_VL = FamilyRecord(
    model_type="qwen2_vl",
    tokens=_TOKENS,
    images_only_processor=Qwen2VLProcessorImagesOnly,
)
QWEN2_5_VL = FamilyRecord(
    model_type="qwen2_5_vl",
    tokens=_TOKENS,
    images_only_processor=Qwen2_5_VLProcessorImagesOnly,
)

RECORDS = (QWEN2_VL, QWEN2_5_VL)
