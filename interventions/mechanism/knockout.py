"""Attention knockout: stop query group A from attending to key group B at chosen layers.

Implemented by editing the 4D attention mask a decoder self-attention receives, in a forward
pre-hook with kwargs, so it works for every family and attention backend that takes a mask:
eager (additive float mask: blocked entries get the dtype's minimum) and sdpa (bool mask:
blocked entries become False). sdpa passes `attention_mask=None` for a purely causal call;
the causal mask is then materialised first. Calls where the edges block nothing are left
untouched, so an empty or inapplicable knockout is bit-identical to none.

Positions are absolute indices into the (padded) prompt the group masks were built for; with a
KV cache the query offset is the cache length (see locate.call_span), so cached `generate()`
sees the same knockout as a full forward. Positions beyond the masks' length (generated
tokens) belong to no group: they are neither blocked as queries nor hidden as keys.

A query whose every allowed key would be blocked keeps its own position (attention to itself),
so no softmax row is empty (that would give NaN in sdpa and a uniform average in eager).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import torch
from torch import nn

from interventions.mechanism.heads import check_heads
from interventions.mechanism.locate import CallSpan, HeadLayout, InterventionError, call_span, locate_heads, window

Edge = tuple[torch.Tensor, torch.Tensor]  # (query_mask [B, S], key_mask [B, S]), bool
MASKED_BACKENDS = ("eager", "sdpa")


def layer_window(center: int, k: int, num_layers: int) -> list[int]:
    """k consecutive layers centred on `center` (k//2 below, (k-1)//2 above), clipped to the model."""
    if not 0 <= center < num_layers:
        raise InterventionError(f"window centre {center} is out of range: the model has layers 0..{num_layers - 1}")
    if k < 1:
        raise InterventionError(f"window size must be >= 1, not {k}")
    start = center - k // 2
    return list(range(max(start, 0), min(start + k, num_layers)))


@contextmanager
def knockout(
    model: nn.Module,
    edges: Sequence[Edge],
    layers: Sequence[int],
    heads: Sequence[int] | None = None,
    layout: HeadLayout | None = None,
) -> Iterator[HeadLayout]:
    """Within the block, queries in each edge's query mask cannot see keys in its key mask.

    Applies at `layers` of the language decoder, to all heads or only to `heads` (`layout`: the
    model's heads, when the caller has located them already, e.g. apply.prepare_spec).
    """
    layout = locate_heads(model) if layout is None else layout
    for layer in layers:
        check_heads(layout, layer)
    for head in heads or ():
        check_heads(layout, 0, head)
    edges = _check_edges(edges)
    backend = model.config.get_text_config()._attn_implementation
    if edges and backend not in MASKED_BACKENDS:
        raise InterventionError(
            f"knockout needs a mask-based attention ({', '.join(MASKED_BACKENDS)}), the model uses {backend!r}; "
            "load it with attn_implementation='sdpa'"
        )
    head_index = torch.tensor(sorted(set(heads)), dtype=torch.long) if heads is not None else None

    def edit_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        mask = kwargs.get("attention_mask")
        span = call_span(module, args, kwargs)
        if mask is not None:  # a static cache's mask spans the whole cache
            span = replace(span, key_length=mask.shape[-1])
        blocked = _blocked(edges, span)
        batch = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).shape[0]
        if blocked.shape[0] != batch:
            raise InterventionError(f"knockout masks have batch size {blocked.shape[0]}, the model got {batch}")
        if not blocked.any():
            return None
        return args, {**kwargs, "attention_mask": _apply(mask, blocked, span, head_index, layout.num_heads)}

    with ExitStack() as hooks:
        for layer in sorted(set(layers)) if edges else ():
            hooks.callback(layout.attentions[layer].register_forward_pre_hook(edit_mask, with_kwargs=True).remove)
        yield layout


def _check_edges(edges: Sequence[Edge]) -> list[Edge]:
    checked = []
    shape = None
    for query, key in edges:
        for mask in (query, key):
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
                raise InterventionError("knockout edges must be pairs of bool masks [batch, seq]")
            if shape is not None and mask.shape != shape:
                raise InterventionError(f"knockout masks differ in shape: {tuple(shape)} vs {tuple(mask.shape)}")
            shape = mask.shape
        checked.append((query, key))
    return checked


def _blocked(edges: list[Edge], span: CallSpan) -> torch.Tensor:
    """[B, q, k] bool: query i may not see key j in this call."""
    blocked = None
    for query, key in edges:
        q = window(query, span.query_offset, span.query_length)
        k = window(key, span.key_offset, span.key_length)
        edge = q[:, :, None] & k[:, None, :]
        blocked = edge if blocked is None else blocked | edge
    return blocked


def _apply(
    mask: torch.Tensor | None, blocked: torch.Tensor, span: CallSpan, head_index: torch.Tensor | None, num_heads: int
) -> torch.Tensor:
    """The call's 4D mask without the `blocked` entries, in the mask's own format (bool or additive)."""
    _, q_len, k_len = blocked.shape
    device = blocked.device if mask is None else mask.device
    query_pos = span.query_offset + torch.arange(q_len, device=device)[:, None]
    key_pos = span.key_offset + torch.arange(k_len, device=device)[None, :]
    if mask is None:  # sdpa's implicit causal mask
        mask = (key_pos <= query_pos)[None, None]
    blocked = blocked.to(device)[:, None]  # [B, 1, q, k]
    if head_index is not None:
        per_head = torch.zeros(1, num_heads, 1, 1, dtype=torch.bool, device=device)
        per_head[:, head_index.to(device)] = True
        blocked = blocked & per_head
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    kept = allowed & ~blocked
    emptied = allowed.any(-1, keepdim=True) & ~kept.any(-1, keepdim=True)
    kept = kept | (emptied & allowed & (key_pos == query_pos))  # an emptied row keeps its own position
    if mask.dtype == torch.bool:
        return kept
    return torch.where(allowed & ~kept, torch.finfo(mask.dtype).min, mask)
