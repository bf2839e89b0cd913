"""The tiny Gemma 3 (gemma3): begin/end-of-image tokens around a fixed count of pooled soft tokens."""

from __future__ import annotations

from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor, Gemma3TextConfig

from interventions.testing.tiny_families.dimensions import (
    HEAD_DIM,
    IMAGE_SIZE,
    IMAGE_TOKEN_ID,
    TEXT,
    VISION_END_ID,
    VISION_START_ID,
    image_type_ids,
    siglip,
    square,
)
from interventions.testing.tiny_families.recipe import TinyModel


def _config() -> Gemma3Config:
    return Gemma3Config(
        vision_config=dict(siglip().to_dict(), image_size=IMAGE_SIZE, patch_size=4),
        text_config=Gemma3TextConfig(**TEXT, num_key_value_heads=2, query_pre_attn_scalar=HEAD_DIM,
                                     sliding_window=512),
        mm_tokens_per_image=4,
        boi_token_index=VISION_START_ID,
        eoi_token_index=VISION_END_ID,
        image_token_index=IMAGE_TOKEN_ID,
    )


def _image(config, image_id: int, batch_size: int, pixels) -> tuple[list[int], dict]:
    side = config.vision_config.image_size
    ids = [config.boi_token_index, *[image_id] * config.mm_tokens_per_image, config.eoi_token_index]
    return ids, {"pixel_values": pixels(batch_size, 3, side, side)}


def _processor(config, tokenizer) -> Gemma3Processor:
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size=square(config.vision_config.image_size), do_pan_and_scan=False),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template, image_seq_length=config.mm_tokens_per_image,
    )


RECIPES = {
    "gemma3": TinyModel(config=_config, image_block=_image, processor=_processor,
                        type_ids=image_type_ids("token_type_ids")),
}
