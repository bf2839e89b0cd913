from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from interventions.mechanism.locate import UnsupportedModelError, locate_heads
from interventions.testing.random_init import (
    HEAD_DIM,
    HEADS,
    LAYERS,
    TINY_FAMILIES,
    build_from_config,
    build_tiny_model,
    llava_1_5_7b_config,
)


def test_locates_decoder_heads_in_layer_order(tiny, family):
    layout = locate_heads(tiny)
    text = tiny.config.get_text_config()
    assert layout.family == family
    assert (layout.num_layers, layout.num_heads, layout.head_dim) == (LAYERS, HEADS, HEAD_DIM)
    assert layout.num_kv_heads == text.num_key_value_heads
    assert [a.layer_idx for a in layout.attentions] == list(range(LAYERS))
    decoder_attentions = [m for m in tiny.get_decoder().modules() if m in set(layout.attentions)]
    assert len(decoder_attentions) == LAYERS  # all from the text decoder, none from the vision tower
    assert layout.out_projection(1) is layout.attentions[1].o_proj


def test_gqa_counts_query_heads():
    gqa = [f for f in TINY_FAMILIES if locate_heads(build_tiny_model(f)[0]).num_kv_heads < HEADS]
    assert len(gqa) >= 3, gqa
    layout = locate_heads(build_tiny_model("smolvlm")[0])
    assert (layout.num_heads, layout.num_kv_heads) == (HEADS, 1)


def test_unsupported_model_lists_what_was_looked_for():
    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=16, patch_size=8))
    with pytest.raises(UnsupportedModelError) as err:
        locate_heads(model)
    assert str(err.value) == (
        "no decoder attention heads found in CLIPVisionModel (model_type 'clip_vision_model'): looked in "
        "'model.language_model' and get_decoder() for modules with q_proj, o_proj, layer_idx, head_dim; "
        "add a record for the family to interventions/families/"
    )


def test_plain_module_is_unsupported():
    with pytest.raises(UnsupportedModelError, match="no decoder attention heads found in Linear"):
        locate_heads(nn.Linear(2, 2))


def test_full_size_llava_config_builds_without_memory():
    """The 7B benchmark model, built on the meta device: geometry and size of LLaVA-1.5-7B."""
    model = build_from_config(llava_1_5_7b_config(), torch.bfloat16, "meta", attn_implementation="sdpa")
    layout = locate_heads(model)
    assert (layout.num_layers, layout.num_heads, layout.head_dim) == (32, 32, 128)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 7.06
    assert model.dtype == torch.bfloat16
