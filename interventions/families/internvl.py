"""InternVL 3 / 3.5 (internvl, e.g. OpenGVLab/InternVL3-8B-hf): InternViT patches pixel-shuffled
into the Qwen2 decoder; the processor expands `<IMG_CONTEXT>` into `<img>` + context tokens + `</img>`."""

from __future__ import annotations

from transformers import InternVLProcessor

from interventions.families.images_only import ImagesOnly
from interventions.families.record import FamilyRecord, FamilyTokens


class InternVLProcessorImagesOnly(ImagesOnly, InternVLProcessor):
    """InternVLProcessor without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length,
                         chat_template=chat_template, **kwargs)


INTERNVL = FamilyRecord(
    model_type="internvl",
    tokens=FamilyTokens(
        image="<IMG_CONTEXT>",
        image_aliases=("context_image_token",),
        free={"start_image_token": "<img>", "end_image_token": "</img>", "video_token": "<video>"},
    ),
    images_only_processor=InternVLProcessorImagesOnly,
)

RECORDS = (INTERNVL,)
