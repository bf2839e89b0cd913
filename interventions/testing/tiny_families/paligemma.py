"""The tiny PaliGemma (paligemma): SigLIP tower, Gemma decoder, a bidirectional prefix up to the image's end."""

from __future__ import annotations

import torch
from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessorPil

from interventions.testing.tiny_families.dimensions import HIDDEN, IMAGE_TOKEN_ID, TEXT, VOCAB, siglip, square
from interventions.testing.tiny_families.recipe import TinyModel


def _config() -> PaliGemmaConfig:
    return PaliGemmaConfig(
        vision_config=siglip(),
        text_config=GemmaConfig(**TEXT, num_key_value_heads=1),
        image_token_index=IMAGE_TOKEN_ID,
        projection_dim=HIDDEN,
        hidden_size=HIDDEN,
        vocab_size=VOCAB,
    )


def _image(config, image_id: int, batch_size: int, pixels) -> tuple[list[int], dict]:
    side = config.vision_config.image_size
    return [image_id] * (side // config.vision_config.patch_size) ** 2, {"pixel_values": pixels(batch_size, 3, side, side)}


def _type_ids(input_ids: torch.Tensor, image_id: int, image_length: int) -> dict[str, torch.Tensor]:
    """The prefix (bidirectional) runs up to the image's end, then the causal suffix (1)."""
    after_image = torch.cumsum((input_ids == image_id).long(), 1) == image_length
    return {"token_type_ids": (after_image & (input_ids != image_id)).long()}


def _processor(config, tokenizer) -> PaliGemmaProcessor:
    side = config.vision_config.image_size
    image_processor = SiglipImageProcessorPil(size=square(side))
    image_processor.image_seq_length = (side // config.vision_config.patch_size) ** 2
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template)


RECIPES = {
    "paligemma": TinyModel(config=_config, image_block=_image, processor=_processor, type_ids=_type_ids),
}
