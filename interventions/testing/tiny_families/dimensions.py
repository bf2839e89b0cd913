"""The shared dimensions of the tiny random-init models the family recipes (TinyModel) build.

Small enough that a forward pass takes milliseconds, yet with several decoder layers and heads
(GQA in some families) so that head indexing and per-layer knockout are exercised.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, SiglipVisionConfig

VOCAB = 128
IMAGE_TOKEN_ID = 120
VISION_START_ID = 121  # Qwen: marks where an image starts (read by its multimodal RoPE)
VISION_END_ID = 122
PAD_TOKEN_ID = 0
IMAGE_SIZE = 16
IMAGE_PATCH = 8  # CLIP/SigLIP towers: (16 / 8)^2 = 4 patches
LAYERS = 3
HIDDEN = 32
HEADS = 4
HEAD_DIM = 8
INTERMEDIATE = 64

TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=INTERMEDIATE,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    head_dim=HEAD_DIM,
    max_position_embeddings=256,
    pad_token_id=PAD_TOKEN_ID,
    bos_token_id=1,
    eos_token_id=2,
)
CLIP = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=IMAGE_PATCH,
    projection_dim=16,
)


def llama(kv_heads: int = 2) -> LlamaConfig:
    return LlamaConfig(**TEXT, num_key_value_heads=kv_heads)


def siglip() -> SiglipVisionConfig:
    return SiglipVisionConfig(**{k: v for k, v in CLIP.items() if k != "projection_dim"})


def square(side: int) -> dict[str, int]:
    """An image processor's size for a `side` x `side` image."""
    return {"height": side, "width": side}


def image_type_ids(key: str):
    """TinyModel.type_ids for processors that mark the image tokens with 1 under `key`."""

    def type_ids(input_ids: torch.Tensor, image_id: int, image_length: int) -> dict[str, torch.Tensor]:
        return {key: (input_ids == image_id).long()}

    return type_ids

