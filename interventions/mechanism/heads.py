"""Block (x0) or amplify (x alpha) attention heads of the language decoder.

In transformers 5.x each decoder attention reshapes its per-head outputs (B, S, H, hd) into
(B, S, H*hd) right before `o_proj`, so head h is exactly input columns [h*hd, (h+1)*hd) of
`o_proj`. A forward pre-hook on `o_proj` multiplies those columns; scaling after `o_proj`
would mix heads. Unscaled columns are multiplied by exactly 1.0, so they stay bit-identical.

`gate_heads` hooks the same place with a live factor tensor [layers, heads] that may require grad,
so autograd sees d(output)/d(gate): attribution reads every head's gradient from one backward pass and
the learned mask optimises the gates directly. A gate of exactly 1.0 leaves its columns bit-identical.

Position scope (`positions`):
- None or "all": every position of every call;
- "last": the last position of each forward call's input, i.e. the position that predicts
  the next token (in cached generation: every newly generated token);
- a bool tensor [B, S] over absolute positions of the (padded) prompt, e.g. the instruction
  tokens. Positions beyond S (tokens generated after the prompt) belong to no group and are
  not scaled; with a KV cache the call's offset is read from the cache.
"""

from __future__ import annotations

import math
from numbers import Integral
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Union

import torch
from torch import nn

from interventions.mechanism.locate import HeadLayout, InterventionError, call_span, locate_heads, window

Positions = Union[None, str, torch.Tensor]
Head = tuple[int, int]  # (decoder layer, head), both 0-based


def check_heads(layout: HeadLayout, layer: int, head: int | None = None) -> None:
    """InterventionError unless layer (and head) index the model's decoder."""
    if not (isinstance(layer, Integral) and 0 <= layer < layout.num_layers):
        raise InterventionError(
            f"layer {layer} is out of range: the model has layers 0..{layout.num_layers - 1}"
        )
    if head is not None and not (isinstance(head, Integral) and 0 <= head < layout.num_heads):
        raise InterventionError(f"head {head} is out of range: the model has heads 0..{layout.num_heads - 1}")


def check_scale(scale: float) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise InterventionError(f"scale {scale!r} must be a finite number >= 0 (0 blocks a head, >1 amplifies)")


@contextmanager
def scale_heads(
    model: nn.Module,
    scales: Mapping[tuple[int, int], float],
    positions: Positions = None,
    layout: HeadLayout | None = None,
) -> Iterator[HeadLayout]:
    """Within the block, multiply head (layer, head)'s output by scales[(layer, head)]
    (`layout`: the model's heads, when the caller has located them already, e.g. apply.prepare_spec)."""
    layout = locate_heads(model) if layout is None else layout
    factors: dict[int, torch.Tensor] = {}
    for (layer, head), scale in scales.items():
        check_heads(layout, layer, head)
        check_scale(scale)
        factor = factors.setdefault(layer, torch.ones(layout.num_heads * layout.head_dim))
        factor[head * layout.head_dim : (head + 1) * layout.head_dim] = float(scale)
    scope = _check_positions(positions)
    with ExitStack() as hooks:
        for layer, factor in factors.items():
            _hook_layer(hooks, layout, layer, lambda factor=factor: factor, scope)
        yield layout


@contextmanager
def gate_heads(model: nn.Module, gates: torch.Tensor) -> Iterator[HeadLayout]:
    """Within the block, multiply head (l, h)'s output by gates[l, h] at every position; the factor is
    expanded at each call, so a backward per forward never reuses a freed graph."""
    layout = locate_heads(model)
    if tuple(gates.shape) != (layout.num_layers, layout.num_heads):
        raise InterventionError(
            f"gates have shape {tuple(gates.shape)} but the model has {layout.num_layers} layers x "
            f"{layout.num_heads} heads; make gates of shape ({layout.num_layers}, {layout.num_heads})"
        )
    with ExitStack() as hooks:
        for layer in range(layout.num_layers):
            _hook_layer(hooks, layout, layer, lambda layer=layer: gates[layer].repeat_interleave(layout.head_dim), None)
        yield layout


def _check_positions(positions: Positions) -> Positions:
    if positions is None or positions == "all":
        return None
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool or positions.dim() != 2:
            raise InterventionError(
                f"positions mask must be a bool tensor [batch, seq], got {positions.dtype} of shape {tuple(positions.shape)}"
            )
        return positions
    if positions == "last":
        return positions
    raise InterventionError(f"positions must be None, 'all', 'last' or a bool [batch, seq] mask, not {positions!r}")


def _hook_layer(hooks: ExitStack, layout: HeadLayout, layer: int, factor: Callable[[], torch.Tensor],
                scope: Positions) -> None:
    """Register the o_proj pre-hook multiplying its input columns by `factor()` (and, for a mask scope, the
    pre-hook that records the call's offset)."""
    attention = layout.attentions[layer]
    offset = {"query": 0}

    def record_offset(module: nn.Module, args: tuple, kwargs: dict) -> None:
        offset["query"] = call_span(module, args, kwargs).query_offset

    def scale_columns(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        f = factor().to(device=x.device, dtype=x.dtype)
        if scope is None:
            return (x * f, *args[1:])
        if isinstance(scope, str):  # "last"
            selected = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
            selected[-1] = True
            selected = selected[None]
        else:
            if scope.shape[0] != x.shape[0]:
                raise InterventionError(
                    f"positions mask has batch size {scope.shape[0]} but the model got a batch of {x.shape[0]}"
                )
            selected = window(scope, offset["query"], x.shape[1]).to(x.device)
        return (x * torch.where(selected[..., None], f, torch.ones_like(f)), *args[1:])

    if isinstance(scope, torch.Tensor):
        hooks.callback(attention.register_forward_pre_hook(record_offset, with_kwargs=True).remove)
    hooks.callback(layout.out_projection(layer).register_forward_pre_hook(scale_columns).remove)
