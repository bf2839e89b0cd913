"""The tiny Qwen2-VL (qwen2_vl) and Qwen2.5-VL (qwen2_5_vl): a grid of merged patches between vision
start/end tokens, read by the multimodal RoPE."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen2VLImageProcessorPil

from interventions.families.qwen2_vl import Qwen2_5_VLProcessorImagesOnly, Qwen2VLProcessorImagesOnly
from interventions.testing.tiny_families.dimensions import (
    HIDDEN,
    IMAGE_TOKEN_ID,
    TEXT,
    VISION_END_ID,
    VISION_START_ID,
    image_type_ids,
)
from interventions.testing.tiny_families.recipe import TinyModel

_IDS = dict(
    image_token_id=IMAGE_TOKEN_ID,
    video_token_id=IMAGE_TOKEN_ID + 4,
    vision_start_token_id=VISION_START_ID,
    vision_end_token_id=VISION_END_ID,
)
_VISION = dict(depth=1, num_heads=2, patch_size=4, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
_GRID = 4  # a 4x4 grid of patches, merged 2x2 into 4 image tokens


def _text() -> dict:
    # Multimodal RoPE: the three sections (time, height, width) must sum to head_dim / 2.
    return dict(
        **TEXT,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
    )


def _qwen2_vl_config() -> Qwen2VLConfig:
    return Qwen2VLConfig(
        text_config=_text(), vision_config=dict(**_VISION, embed_dim=16, hidden_size=HIDDEN, mlp_ratio=2), **_IDS
    )


def _qwen2_5_vl_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=_text(),
        vision_config=dict(
            **_VISION, hidden_size=16, intermediate_size=32, out_hidden_size=HIDDEN, window_size=16,
            fullatt_block_indexes=[0],
        ),
        **_IDS,
    )


def _image(config, image_id: int, batch_size: int, pixels) -> tuple[list[int], dict]:
    vision = config.vision_config
    merge = vision.spatial_merge_size
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    ids = [config.vision_start_token_id, *[image_id] * (_GRID * _GRID // merge**2), config.vision_end_token_id]
    return ids, {
        "pixel_values": pixels(batch_size * _GRID * _GRID, patch_dim),
        "image_grid_thw": torch.tensor([[1, _GRID, _GRID]] * batch_size),
    }


def _processor(images_only: type):
    def build(config, tokenizer):
        vision = config.vision_config
        pixels = (vision.patch_size * vision.spatial_merge_size * 2) ** 2  # a 2x2 grid of merged patches
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": pixels, "longest_edge": pixels},
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
        )
        return images_only(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template)

    return build


RECIPES = {
    "qwen2_vl": TinyModel(config=_qwen2_vl_config, image_block=_image, processor=_processor(Qwen2VLProcessorImagesOnly),
                          type_ids=image_type_ids("mm_token_type_ids")),
    "qwen2_5_vl": TinyModel(config=_qwen2_5_vl_config, image_block=_image,
                            processor=_processor(Qwen2_5_VLProcessorImagesOnly),
                            type_ids=image_type_ids("mm_token_type_ids")),
}
