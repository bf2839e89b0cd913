"""Tiny random-init VLMs of every supported family, built offline from configs.

No weights can be downloaded here, so the interventions are tested on real transformers
architectures with random weights: each family gets a config small enough that a forward
pass takes milliseconds, yet with several decoder layers and heads (GQA in some) so that
head indexing and per-layer knockout are exercised. `build_from_config` does the same at a
real config (e.g. LLaVA-1.5-7B) for speed and memory measurements.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from interventions.families import FAMILY_NAMES, get_family
from interventions.testing.tiny_families import TINY_MODELS
from interventions.testing.tiny_families.dimensions import (  # noqa: F401  (the tiny dimensions the tests read)
    HEAD_DIM,
    HEADS,
    HIDDEN,
    IMAGE_PATCH,
    IMAGE_SIZE,
    IMAGE_TOKEN_ID,
    INTERMEDIATE,
    LAYERS,
    PAD_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
    VOCAB,
)
from interventions.mechanism.token_groups import image_token_id

TINY_FAMILIES: tuple[str, ...] = FAMILY_NAMES


def tiny_config(family: str) -> PretrainedConfig:
    """The tiny config of `family` (one of TINY_FAMILIES), from its recipe."""
    return TINY_MODELS[get_family(family).model_type].config()


def build_from_config(
    config: PretrainedConfig,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A random-init image-text-to-text model for `config`, in eval mode, on `device`.

    Built directly on the device in `dtype` so a 7B config never materialises in fp32 on the CPU.
    Gemma 3 initialises its image projection to zeros (it is meant to be loaded), which would
    hide the image from the text entirely; it gets random weights like every other layer.
    """
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation or config._attn_implementation
        )
    for name, param in model.named_parameters():
        if name.endswith("mm_input_projection_weight"):
            torch.nn.init.normal_(param, std=config.initializer_range)
    return model.eval()


def build_tiny_model(
    family: str, attn_implementation: str = "eager", seed: int = 0
) -> tuple[PreTrainedModel, None]:
    """A tiny random-init model of `family`, deterministic in `seed`; no processor (no hub)."""
    torch.manual_seed(seed)
    return build_from_config(tiny_config(family), attn_implementation=attn_implementation), None


def random_batch(
    model: PreTrainedModel,
    batch_size: int = 2,
    text_before: int = 3,
    text_after: int = 6,
    padding_side: str = "left",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Model inputs for `batch_size` prompts `[text][image][text]` with random tokens and pixels.

    Row b is b tokens shorter than row 0 and padded on `padding_side`, so padded masks are
    exercised; the image block carries the family's delimiters (Qwen, Gemma 3). Gemma 3 and
    PaliGemma get the `token_type_ids`, Qwen the `mm_token_type_ids` their processors emit.
    """
    config = model.config
    tiny = TINY_MODELS[config.model_type]
    gen = torch.Generator().manual_seed(seed)
    image_id = image_token_id(config)
    image_ids, pixel_inputs = tiny.image_block(config, image_id, batch_size,
                                               lambda *shape: torch.randn(*shape, generator=gen))
    low, high = 3, min(IMAGE_TOKEN_ID, config.get_text_config().vocab_size)
    rows = []
    for b in range(batch_size):
        before = torch.randint(low, high, (text_before,), generator=gen).tolist()
        after = torch.randint(low, high, (max(text_after - b, 1),), generator=gen).tolist()
        rows.append([1, *before, *image_ids, *after])
    width = max(map(len, rows))
    input_ids = torch.full((batch_size, width), PAD_TOKEN_ID)
    attention_mask = torch.zeros(batch_size, width, dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[b, span] = torch.tensor(row)
        attention_mask[b, span] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, **pixel_inputs}
    if tiny.type_ids:
        batch.update(tiny.type_ids(input_ids, image_id, len(image_ids)))
    return {k: v.to(model.device) if k != "pixel_values" else v.to(model.device, model.dtype) for k, v in batch.items()}


def llava_1_5_7b_config() -> LlavaConfig:
    """The architecture of llava-hf/llava-1.5-7b-hf (its config.json values), for full-size measurements."""
    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        ),
        text_config=LlamaConfig(
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            pad_token_id=32001,
        ),
        image_token_index=32000,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
