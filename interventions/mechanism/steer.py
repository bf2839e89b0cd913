"""Residual-stream steering: add `alpha * v` to the output of chosen decoder layers.

The decoder layers are found as the parents of the attention modules `locate_heads` finds, so
every family with a record steers without a record of its own. A forward hook on layer l changes
what the next layer reads, which is `hidden_states[l + 1]` of `output_hidden_states` (the hook is
prepended, so transformers' own output recorder sees the steered value).

Position scope, as for head scaling: None or "all" (every position), or a bool mask [B, S + generated]
over absolute positions (the answer positions of `apply.answer_positions`, or a token group);
"last" without a mask is the final position of each call. With a KV cache a decode step's absolute
offset is read from the cache by the attention call inside the layer (`locate.call_span`).

Vectors are stored as safetensors (never pickle): one 1-D float tensor under VECTOR_KEY.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from interventions.mechanism.heads import Positions, _check_positions, check_heads
from interventions.mechanism.locate import HeadLayout, InterventionError, call_span, locate_heads, window

VECTOR_KEY = "vector"


def decoder_layers(model: nn.Module, layout: HeadLayout | None = None) -> tuple[nn.Module, ...]:
    """The decoder layers in order: the module holding each located attention module as a child."""
    layout = locate_heads(model) if layout is None else layout
    parents = {id(child): module for module in model.modules() for child in module.children()}
    return tuple(parents[id(attention)] for attention in layout.attentions)


def hidden_size(model: nn.Module) -> int:
    """The width of the language decoder's residual stream."""
    return int(model.config.get_text_config().hidden_size)


def check_vector(vector: torch.Tensor, width: int | None = None, source: str = "steering vector") -> None:
    """InterventionError unless `vector` is a finite 1-D float tensor (of `width` entries, when given)."""
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1 or not vector.is_floating_point():
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise InterventionError(f"{source} must be one 1-D float tensor, got {shape}; save one vector of the "
                                "decoder's hidden size")
    if not bool(torch.isfinite(vector).all()):
        raise InterventionError(f"{source} has non-finite entries (nan or inf); fit or save a finite vector")
    if width is not None and vector.shape[0] != width:
        raise InterventionError(f"{source} has {vector.shape[0]} entries but the model's hidden size is {width}; "
                                "use a vector fitted on this model")


def check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise InterventionError(f"steering alpha {alpha!r} must be a finite number, e.g. 4 or -2")


def vector_bytes(vector: torch.Tensor) -> bytes:
    """The safetensors file of `vector` (deterministic: the same vector gives the same bytes)."""
    return save_safetensors({VECTOR_KEY: vector.detach().to("cpu", torch.float32).contiguous()})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_vector_file(path: str | Path, expected_sha256: str | None = None) -> bytes:
    """The bytes of vector file `path` (InterventionError when missing or when its sha256 differs from
    `expected_sha256`: the file changed after the spec naming it was written)."""
    path = Path(path)
    if not path.is_file():
        raise InterventionError(f"steering vector file {path} does not exist; check the path")
    data = path.read_bytes()
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise InterventionError(f"steering vector file {path} does not match the sha256 its spec records "
                                "(changed since the spec was written); restore it or write the spec again")
    return data


def parse_vector(data: bytes, source: str) -> torch.Tensor:
    """The one finite 1-D tensor in safetensors bytes `data`, as float32 (`source` names it in errors)."""
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as err:
        raise InterventionError(f"{source} is not a safetensors file ({err}); "
                                "save it with safetensors.torch.save_file") from None
    if len(tensors) != 1:
        raise InterventionError(f"{source} holds {len(tensors)} tensors; save exactly one")
    vector = next(iter(tensors.values()))
    check_vector(vector, source=source)
    return vector.float()


def read_vector(path: str | Path, expected_sha256: str | None = None) -> torch.Tensor:
    """The vector in safetensors file `path`, checked (see read_vector_file and parse_vector)."""
    return parse_vector(read_vector_file(path, expected_sha256), f"steering vector file {path}")


@contextmanager
def steer(
    model: nn.Module,
    vector: torch.Tensor,
    layers: Sequence[int],
    alpha: float,
    positions: Positions = None,
    layout: HeadLayout | None = None,
) -> Iterator[None]:
    """Within the block, the output of each decoder layer in `layers` gets `alpha * vector` added at `positions`."""
    layout = locate_heads(model) if layout is None else layout
    check_alpha(alpha)
    check_vector(vector, hidden_size(model))
    for layer in layers:
        check_heads(layout, layer)
    scope = _check_positions(positions)
    modules = decoder_layers(model, layout)
    with ExitStack() as hooks:
        for layer in dict.fromkeys(layers):
            _hook_layer(hooks, layout.attentions[layer], modules[layer], alpha * vector.float(), scope)
        yield


def _hook_layer(hooks: ExitStack, attention: nn.Module, layer: nn.Module, shift: torch.Tensor, scope: Positions) -> None:
    """Record the call's absolute offset at the attention inside `layer`, then add `shift` to the layer's output."""
    offset = {"query": 0}

    def record_offset(module: nn.Module, args: tuple, kwargs: dict) -> None:
        offset["query"] = call_span(module, args, kwargs).query_offset

    def add(module: nn.Module, args: tuple, output):
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + shift.to(device=hidden.device, dtype=hidden.dtype)
        if scope is not None:
            if isinstance(scope, str):  # "last" without answer positions: the final position of the call
                selected = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
                selected[:, -1] = True
            else:
                if scope.shape[0] != hidden.shape[0]:
                    raise InterventionError(
                        f"positions mask has batch size {scope.shape[0]} but the model got a batch of {hidden.shape[0]}"
                    )
                selected = window(scope, offset["query"], hidden.shape[1]).to(hidden.device)
            steered = torch.where(selected[..., None], steered, hidden)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    if isinstance(scope, torch.Tensor):
        hooks.callback(attention.register_forward_pre_hook(record_offset, with_kwargs=True).remove)
    hooks.callback(layer.register_forward_hook(add, prepend=True).remove)
