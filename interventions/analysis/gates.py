"""Differentiable per-head gates: head h of layer l's output times gates[l, h], a tensor that may require grad.

The same place as heads.scale_heads (the input columns of o_proj, by a forward pre-hook), but the
factor is a live tensor, so autograd sees d(output)/d(gate): attribution reads every head's
gradient from one backward pass, and the learned mask optimises the gates directly. A gate of
exactly 1.0 leaves its columns bit-identical; a gate of 0 is heads.scale_heads' block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from interventions.mechanism.locate import HeadLayout, InterventionError, locate_heads


@contextmanager
def gate_heads(model: nn.Module, gates: torch.Tensor) -> Iterator[HeadLayout]:
    """Within the block, multiply head (l, h)'s output by gates[l, h] at every position."""
    layout = locate_heads(model)
    if tuple(gates.shape) != (layout.num_layers, layout.num_heads):
        raise InterventionError(
            f"gates have shape {tuple(gates.shape)} but the model has {layout.num_layers} layers x "
            f"{layout.num_heads} heads; make gates of shape ({layout.num_layers}, {layout.num_heads})"
        )

    def hook(layer: int):
        def multiply(module: nn.Module, args: tuple) -> tuple:
            factor = gates[layer].to(device=args[0].device, dtype=args[0].dtype).repeat_interleave(layout.head_dim)
            return (args[0] * factor, *args[1:])

        return multiply

    with ExitStack() as hooks:
        for layer in range(layout.num_layers):
            hooks.callback(layout.out_projection(layer).register_forward_pre_hook(hook(layer)).remove)
        yield layout
