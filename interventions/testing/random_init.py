"""Tiny random-init VLMs of every supported family, built offline from configs.

No weights can be downloaded here, so the interventions are tested on real transformers
architectures with random weights: each family gets a config small enough that a forward
pass takes milliseconds, yet with several decoder layers and heads (GQA in some) so that
head indexing and per-layer knockout are exercised. `build_from_config` does the same at a
real config (e.g. LLaVA-1.5-7B) for speed and memory measurements.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3TextConfig,
    GemmaConfig,
    Idefics3Config,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaOnevisionConfig,
    PaliGemmaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLConfig,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMVisionConfig,
)

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

_TEXT = dict(
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
_CLIP = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=IMAGE_PATCH,
    projection_dim=16,
)


def _llama(kv_heads: int = 2) -> LlamaConfig:
    return LlamaConfig(**_TEXT, num_key_value_heads=kv_heads)


def _llava() -> PretrainedConfig:
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**_CLIP),
        text_config=_llama(),
        image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=(IMAGE_SIZE // IMAGE_PATCH) ** 2,
    )


def _llava_next() -> PretrainedConfig:
    return LlavaNextConfig(
        vision_config=CLIPVisionConfig(**_CLIP),
        text_config=_llama(kv_heads=4),
        image_token_index=IMAGE_TOKEN_ID,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
        image_seq_length=(IMAGE_SIZE // IMAGE_PATCH) ** 2,
    )


def _llava_onevision() -> PretrainedConfig:
    return LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**{k: v for k, v in _CLIP.items() if k != "projection_dim"}),
        text_config=Qwen2Config(**_TEXT, num_key_value_heads=2),
        image_token_index=IMAGE_TOKEN_ID,
        video_token_index=IMAGE_TOKEN_ID + 1,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
        vision_aspect_ratio="anyres_max_1",
    )


def _qwen_text() -> dict:
    # Multimodal RoPE: the three sections (time, height, width) must sum to head_dim / 2.
    return dict(
        **_TEXT,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
    )


_QWEN_VISION = dict(depth=1, num_heads=2, patch_size=4, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)


def _qwen2_vl() -> PretrainedConfig:
    return Qwen2VLConfig(
        text_config=_qwen_text(),
        vision_config=dict(**_QWEN_VISION, embed_dim=16, hidden_size=HIDDEN, mlp_ratio=2),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=IMAGE_TOKEN_ID + 4,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
    )


def _qwen2_5_vl() -> PretrainedConfig:
    return Qwen2_5_VLConfig(
        text_config=_qwen_text(),
        vision_config=dict(
            **_QWEN_VISION,
            hidden_size=16,
            intermediate_size=32,
            out_hidden_size=HIDDEN,
            window_size=16,
            fullatt_block_indexes=[0],
        ),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=IMAGE_TOKEN_ID + 4,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
    )


# Idefics3 / SmolVLM: SigLIP patches of 4 px on a 16 px image, pixel-shuffled by 2 -> 4 tokens.
_IDEFICS_VISION = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                       image_size=IMAGE_SIZE, patch_size=4)


def _idefics3() -> PretrainedConfig:
    return Idefics3Config(
        vision_config=Idefics3VisionConfig(**_IDEFICS_VISION),
        text_config=_llama(),
        image_token_id=IMAGE_TOKEN_ID,
        scale_factor=2,
    )


def _smolvlm() -> PretrainedConfig:
    return SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(**_IDEFICS_VISION),
        text_config=_llama(kv_heads=1),
        image_token_id=IMAGE_TOKEN_ID,
        scale_factor=2,
    )


def _siglip() -> SiglipVisionConfig:
    return SiglipVisionConfig(**{k: v for k, v in _CLIP.items() if k != "projection_dim"})


def _paligemma() -> PretrainedConfig:
    return PaliGemmaConfig(
        vision_config=_siglip(),
        text_config=GemmaConfig(**_TEXT, num_key_value_heads=1),
        image_token_index=IMAGE_TOKEN_ID,
        projection_dim=HIDDEN,
        hidden_size=HIDDEN,
        vocab_size=VOCAB,
    )


def _gemma3() -> PretrainedConfig:
    return Gemma3Config(
        vision_config=dict(_siglip().to_dict(), image_size=IMAGE_SIZE, patch_size=4),
        text_config=Gemma3TextConfig(**_TEXT, num_key_value_heads=2, query_pre_attn_scalar=HEAD_DIM,
                                     sliding_window=512),
        mm_tokens_per_image=4,
        boi_token_index=VISION_START_ID,
        eoi_token_index=VISION_END_ID,
        image_token_index=IMAGE_TOKEN_ID,
    )


_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "idefics3": _idefics3,
    "smolvlm": _smolvlm,
    "paligemma": _paligemma,
    "gemma3": _gemma3,
}
TINY_FAMILIES: tuple[str, ...] = tuple(_CONFIGS)


def tiny_config(family: str) -> PretrainedConfig:
    """The tiny config of `family` (one of TINY_FAMILIES)."""
    if family not in _CONFIGS:
        raise ValueError(f"no tiny config for family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    return _CONFIGS[family]()


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


def _image_block(config: PretrainedConfig, batch_size: int, gen: torch.Generator) -> tuple[list[int], dict]:
    """Token ids of one image in the prompt (image tokens with the family's delimiters) and pixel inputs."""
    family = config.model_type
    image_id = _image_token_id(config)
    vision = config.vision_config

    def pixels(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    if family in ("llava", "paligemma", "gemma3"):
        side = vision.image_size
        patches = (side // vision.patch_size) ** 2
        if family == "llava":
            count = patches + (config.vision_feature_select_strategy == "full")
        else:
            count = getattr(config, "mm_tokens_per_image", patches)
        ids = [image_id] * count
        if family == "gemma3":
            ids = [config.boi_token_index, *ids, config.eoi_token_index]
        return ids, {"pixel_values": pixels(batch_size, 3, side, side)}
    if family in ("llava_next", "llava_onevision"):
        # One tile matching the single grid pinpoint: base image + tile, unpadded, plus a newline per row.
        side = vision.image_size
        per_side = side // vision.patch_size
        count = per_side**2 + per_side * (per_side + 1)
        return [image_id] * count, {
            "pixel_values": pixels(batch_size, 2, 3, side, side),
            "image_sizes": torch.tensor([[side, side]] * batch_size),
        }
    if family in ("qwen2_vl", "qwen2_5_vl"):
        grid, merge = 4, vision.spatial_merge_size
        patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
        ids = [config.vision_start_token_id, *[image_id] * (grid * grid // merge**2), config.vision_end_token_id]
        return ids, {
            "pixel_values": pixels(batch_size * grid * grid, patch_dim),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * batch_size),
        }
    if family in ("idefics3", "smolvlm"):
        side = vision.image_size
        count = (side // vision.patch_size) ** 2 // config.scale_factor**2
        return [image_id] * count, {"pixel_values": pixels(batch_size, 1, 3, side, side)}
    raise ValueError(f"no random inputs for model type {family!r}; choose one of {', '.join(TINY_FAMILIES)}")


def _image_token_id(config: PretrainedConfig) -> int:
    image_id = getattr(config, "image_token_id", None)
    return image_id if image_id is not None else config.image_token_index


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
    gen = torch.Generator().manual_seed(seed)
    image_ids, pixel_inputs = _image_block(config, batch_size, gen)
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
    if config.model_type == "gemma3":
        batch["token_type_ids"] = (input_ids == _image_token_id(config)).long()
    if config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        batch["mm_token_type_ids"] = (input_ids == _image_token_id(config)).long()
    if config.model_type == "paligemma":  # prefix (bidirectional) up to the image's end, then causal suffix
        after_image = torch.cumsum((input_ids == _image_token_id(config)).long(), 1) == len(image_ids)
        batch["token_type_ids"] = (after_image & (input_ids != _image_token_id(config))).long()
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
