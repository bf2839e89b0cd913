"""The tiny InternVL (internvl): InternViT patches pixel-shuffled into a Qwen2 decoder, one tile per image."""

from __future__ import annotations

from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLVisionConfig, Qwen2Config

from interventions.families.internvl import InternVLProcessorImagesOnly
from interventions.testing.tiny_families.dimensions import IMAGE_SIZE, IMAGE_TOKEN_ID, TEXT, square
from interventions.testing.tiny_families.recipe import TinyModel


def _config() -> InternVLConfig:
    # Patches of 4 px on a 16 px image, pixel-shuffled by 0.5 -> 4 image tokens.
    return InternVLConfig(
        vision_config=InternVLVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=4),
        text_config=Qwen2Config(**TEXT, num_key_value_heads=2),
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=4,
        downsample_ratio=0.5,
    )


def _image(config, image_id: int, batch_size: int, pixels) -> tuple[list[int], dict]:
    """The context tokens only: `<img>` / `</img>` have no id in the config, so a random batch has none."""
    height, width = config.vision_config.image_size
    return [image_id] * config.image_seq_length, {"pixel_values": pixels(batch_size, 3, height, width)}


def _processor(config, tokenizer) -> InternVLProcessorImagesOnly:
    # One tile per image (max_patches=1: no crops, no thumbnail), so every image is image_seq_length tokens.
    height, _ = config.vision_config.image_size
    return InternVLProcessorImagesOnly(
        image_processor=GotOcr2ImageProcessorPil(size=square(height), max_patches=1),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template, image_seq_length=config.image_seq_length,
    )


RECIPES = {
    "internvl": TinyModel(config=_config, image_block=_image, processor=_processor),
}
