"""The tiny LLaVA-1.5 (llava), LLaVA-NeXT (llava_next) and LLaVA-OneVision (llava_onevision)."""

from __future__ import annotations

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessorPil,
    LlavaProcessor,
    Qwen2Config,
)

from interventions.families.llava import LlavaOnevisionProcessorImagesOnly
from interventions.testing.tiny_families.dimensions import (
    CLIP,
    IMAGE_PATCH,
    IMAGE_SIZE,
    IMAGE_TOKEN_ID,
    TEXT,
    llama,
    siglip,
    square,
)
from interventions.testing.tiny_families.recipe import TinyModel


# --- LLaVA-1.5 ---------------------------------------------------------------------------------
def _llava_config() -> LlavaConfig:
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**CLIP),
        text_config=llama(),
        image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=(IMAGE_SIZE // IMAGE_PATCH) ** 2,
    )


def _llava_image(config, image_id: int, batch_size: int, pixels) -> tuple[list[int], dict]:
    side = config.vision_config.image_size
    count = (side // config.vision_config.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")
    return [image_id] * count, {"pixel_values": pixels(batch_size, 3, side, side)}


def _llava_processor(config, tokenizer) -> LlavaProcessor:
    side = config.vision_config.image_size
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size=square(side)),
        tokenizer=tokenizer, patch_size=config.vision_config.patch_size, chat_template=tokenizer.chat_template,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token
    )


# --- LLaVA-NeXT and OneVision: one tile matching the single grid pinpoint -------------------------
def _tiled_image(config, image_id: int, batch_size: int, pixels) -> tuple[list[int], dict]:
    """Base image + one tile, unpadded, plus a newline per row."""
    side = config.vision_config.image_size
    per_side = side // config.vision_config.patch_size
    count = per_side**2 + per_side * (per_side + 1)
    return [image_id] * count, {
        "pixel_values": pixels(batch_size, 2, 3, side, side),
        "image_sizes": torch.tensor([[side, side]] * batch_size),
    }


def _llava_next_config() -> LlavaNextConfig:
    return LlavaNextConfig(
        vision_config=CLIPVisionConfig(**CLIP),
        text_config=llama(kv_heads=4),
        image_token_index=IMAGE_TOKEN_ID,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
        image_seq_length=(IMAGE_SIZE // IMAGE_PATCH) ** 2,
    )


def _llava_next_processor(config, tokenizer) -> LlavaNextProcessor:
    side = config.vision_config.image_size
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": side}, crop_size=square(side), image_grid_pinpoints=config.image_grid_pinpoints
        ),
        tokenizer=tokenizer, patch_size=config.vision_config.patch_size, chat_template=tokenizer.chat_template,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
    )


def _llava_onevision_config() -> LlavaOnevisionConfig:
    return LlavaOnevisionConfig(
        vision_config=siglip(),
        text_config=Qwen2Config(**TEXT, num_key_value_heads=2),
        image_token_index=IMAGE_TOKEN_ID,
        video_token_index=IMAGE_TOKEN_ID + 1,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
        vision_aspect_ratio="anyres_max_1",
    )


def _llava_onevision_processor(config, tokenizer) -> LlavaOnevisionProcessorImagesOnly:
    side, patch = config.vision_config.image_size, config.vision_config.patch_size
    return LlavaOnevisionProcessorImagesOnly(
        image_processor=LlavaOnevisionImageProcessorPil(size=square(side), image_grid_pinpoints=config.image_grid_pinpoints),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template,
        num_image_tokens=(side // patch) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio,
    )


RECIPES = {
    "llava": TinyModel(config=_llava_config, image_block=_llava_image, processor=_llava_processor),
    "llava_next": TinyModel(config=_llava_next_config, image_block=_tiled_image, processor=_llava_next_processor),
    "llava_onevision": TinyModel(config=_llava_onevision_config, image_block=_tiled_image,
                                 processor=_llava_onevision_processor),
}
