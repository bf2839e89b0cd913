"""Find the language model's decoder self-attention heads, and the token positions a call covers.

Every intervention addresses heads as (layer, head) of the text decoder, so this is the one
place that maps those indices to modules. The search is generic: modules of the text decoder
that have the attributes named by the family layout (q_proj, o_proj, layer_idx, head_dim);
vision towers live outside the decoder and use other names, so they never match.

Interventions scoped to token positions also need to know which absolute positions (indices
into the padded prompt) one attention call's queries and keys are; with a KV cache those
start at the cache length, so `call_span` reads them from the cache object the call receives
(found by its type: transformers has renamed the keyword that carries it, `past_key_values` -> `cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn
from transformers.cache_utils import Cache

from modarb_tasks.errors import ModarbError
from interventions.families import FamilyLayout, family_layout


class InterventionError(ModarbError):
    """A bad intervention request; the message is one line naming the problem and the fix."""


class UnsupportedModelError(InterventionError):
    """The model's decoder attention heads could not be located."""


@dataclass(frozen=True)
class HeadLayout:
    """The decoder attention modules in layer order and the head geometry they share."""

    family: str  # the top-level config's model_type
    attentions: tuple[nn.Module, ...]
    num_heads: int  # query heads (GQA models have fewer key/value heads)
    num_kv_heads: int
    head_dim: int
    out_proj: str  # attribute name of the projection whose input holds the head outputs

    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    def out_projection(self, layer: int) -> nn.Linear:
        return getattr(self.attentions[layer], self.out_proj)


def locate_heads(model: nn.Module) -> HeadLayout:
    """The HeadLayout of `model`'s language decoder; UnsupportedModelError if there is none.

    Found once per model object: every hook engine, sweep and resumed forward asks for it, often
    per batch, and a model's modules do not change while it is being analysed.
    """
    if model not in _LAYOUTS:
        _LAYOUTS[model] = _find_heads(model)
    return _LAYOUTS[model]


_LAYOUTS: WeakKeyDictionary[nn.Module, HeadLayout] = WeakKeyDictionary()  # dropped with the model


def _find_heads(model: nn.Module) -> HeadLayout:
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    layout = family_layout(model_type)
    decoder = _decoder(model, layout)
    found = [
        module
        for module in (decoder.modules() if decoder is not None else ())
        if all(hasattr(module, attr) for attr in layout.attention_attrs)
    ]
    if not found:
        raise UnsupportedModelError(
            f"no decoder attention heads found in {type(model).__name__} (model_type {model_type!r}): looked in "
            f"{layout.decoder_path!r} and get_decoder() for modules with {', '.join(layout.attention_attrs)}; "
            "add a record for the family to interventions/families/"
        )
    found.sort(key=lambda module: module.layer_idx)
    indices = [module.layer_idx for module in found]
    if indices != list(range(len(found))):
        raise UnsupportedModelError(
            f"decoder attention layers of {model_type!r} are not numbered 0..{len(found) - 1}: {indices}"
        )
    head_dim = found[0].head_dim
    text_config = model.config.get_text_config()
    num_heads = getattr(found[0].q_proj, "out_features", 0) // head_dim
    num_kv_heads = getattr(found[0], "k_proj", found[0].q_proj).out_features // head_dim
    out_features = getattr(found[0], layout.out_proj).in_features
    if num_heads != text_config.num_attention_heads or out_features != num_heads * head_dim:
        raise UnsupportedModelError(
            f"head geometry of {model_type!r} is inconsistent: q_proj gives {num_heads} heads of {head_dim}, "
            f"config says {text_config.num_attention_heads}, {layout.out_proj} takes {out_features} inputs"
        )
    return HeadLayout(
        family=model_type,
        attentions=tuple(found),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        out_proj=layout.out_proj,
    )


def _decoder(model: nn.Module, layout: FamilyLayout) -> nn.Module | None:
    module: nn.Module | None = model
    for name in layout.decoder_path.split("."):
        module = getattr(module, name, None)
    if isinstance(module, nn.Module):
        return module
    get_decoder = getattr(model, "get_decoder", None)
    return get_decoder() if callable(get_decoder) else None


@dataclass(frozen=True)
class CallSpan:
    """Absolute positions seen by one attention call: queries [query_offset, +query_length),
    keys [key_offset, +key_length) (key index j of the mask is absolute position key_offset + j)."""

    query_offset: int
    query_length: int
    key_offset: int
    key_length: int


def call_span(attention: nn.Module, args: tuple, kwargs: dict[str, Any]) -> CallSpan:
    """The CallSpan of a self-attention call, read in a forward pre-hook (before the cache update)."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    query_length = hidden.shape[1]
    cache = kv_cache(kwargs)
    if cache is None:
        return CallSpan(0, query_length, 0, query_length)
    past = cache.get_seq_length(attention.layer_idx)
    key_length, key_offset = cache.get_mask_sizes(query_length, attention.layer_idx)
    return CallSpan(past, query_length, key_offset, key_length)


def kv_cache(kwargs: dict[str, Any]) -> Cache | None:
    """The KV cache among an attention call's keyword arguments, whatever the keyword is called."""
    return next((value for value in kwargs.values() if isinstance(value, Cache)), None)


def window(mask: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Columns [start, start+length) of a [B, S] bool mask; positions past S are False."""
    piece = mask[:, start : start + length]
    missing = length - piece.shape[1]
    return nn.functional.pad(piece, (0, missing), value=False) if missing else piece
