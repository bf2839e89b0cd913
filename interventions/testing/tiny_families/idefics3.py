"""The tiny Idefics3 (idefics3) and SmolVLM (smolvlm): SigLIP patches pixel-shuffled into few image tokens."""

from __future__ import annotations

from transformers import (
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    SmolVLMConfig,
    SmolVLMImageProcessorPil,
    SmolVLMVisionConfig,
)

from interventions.families.idefics3 import SmolVLMProcessorImagesOnly
from interventions.testing.tiny_families.dimensions import IMAGE_SIZE, IMAGE_TOKEN_ID, llama
from interventions.testing.tiny_families.recipe import TinyModel

# SigLIP patches of 4 px on a 16 px image, pixel-shuffled by 2 -> 4 tokens.
_VISION = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
               image_size=IMAGE_SIZE, patch_size=4)


def _idefics3_config() -> Idefics3Config:
    return Idefics3Config(
        vision_config=Idefics3VisionConfig(**_VISION), text_config=llama(), image_token_id=IMAGE_TOKEN_ID, scale_factor=2
    )


def _smolvlm_config() -> SmolVLMConfig:
    return SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(**_VISION), text_config=llama(kv_heads=1), image_token_id=IMAGE_TOKEN_ID,
        scale_factor=2,
    )


def _image(config, image_id: int, batch_size: int, pixels) -> tuple[list[int], dict]:
    side = config.vision_config.image_size
    count = (side // config.vision_config.patch_size) ** 2 // config.scale_factor**2
    return [image_id] * count, {"pixel_values": pixels(batch_size, 1, 3, side, side)}


def _processor(processor_cls: type, image_processor_cls: type):
    def build(config, tokenizer):
        side, patch = config.vision_config.image_size, config.vision_config.patch_size
        return processor_cls(
            image_processor=image_processor_cls(
                size={"longest_edge": side}, max_image_size={"longest_edge": side}, do_image_splitting=False
            ),
            tokenizer=tokenizer, chat_template=tokenizer.chat_template,
            image_seq_len=(side // patch) ** 2 // config.scale_factor**2,
        )

    return build


RECIPES = {
    "idefics3": TinyModel(config=_idefics3_config, image_block=_image,
                          processor=_processor(Idefics3Processor, Idefics3ImageProcessorPil)),
    "smolvlm": TinyModel(config=_smolvlm_config, image_block=_image,
                         processor=_processor(SmolVLMProcessorImagesOnly, SmolVLMImageProcessorPil)),
}
