"""Resume a forward from the intervened layer: the clean run's decoder-layer inputs, kept for one batch.

A head blocked at layer l, or a knockout window starting at l, leaves every layer below l exactly
as in the clean forward. So a sweep that evaluates many interventions on one batch runs the clean
forward once (`resumable`), keeping the input of each decoder layer it will resume from (the hidden
states and every other argument the decoder passes the layer: position embeddings, the layer's
mask, position ids), then runs only layers l..L-1, the final norm and the LM head at the last
position for each intervention (`Resumable.last_logits`). The intervention hooks (head scaling,
gates, knockout) sit on the attention modules, so they act in a resumed forward as in a full one.

Generic and checked, not assumed: the decoder layers are the parents of the attention modules that
`locate.locate_heads` finds (one per family record), the final norm is the decoder's `norm`, the
head the model's output embeddings. The clean forward itself verifies the replay: each layer's
input must equal the previous layer's output (nothing happens between layers), and norm + head
(+ the text config's logit soft-capping, where the model applies it) on the last layer's output must
give the model's own logits. If anything does not match, or the model has no `norm`, every
intervention runs as a full forward. The results are then bit-identical to full forwards.

Resume from a position too: an intervention that acts only on queries from position p on (a
knockout whose receiving group starts at p; the prompt before it is unchanged) leaves every
position before p unchanged in every layer, as long as no earlier position attends to a later one
(causal attention; not a prefix-LM such as PaliGemma's, checked on the replayed layers' masks). Asked
for `positions`, the clean forward also keeps each layer's keys and values, and such a replay runs
layers l..L-1 on positions p..S-1 only, reading the earlier positions' keys and values from them, as
cached generation does. Each batch checks one such replay against the clean logits (to the float
tolerance of the dtype: the attention runs over different query lengths, so not bit for bit); if it
does not match, or the layers take an argument it cannot cut at p, replays run over every position.

Memory: one kept layer input is batch x tokens x hidden x bytes; Qwen2.5-VL-7B, every one of its 28
layers, a batch of 16 prompts of 550 tokens in bf16: 28 x 16 x 550 x 3584 x 2 B = 1.77 GB (7.1 GB at
reproduce's batch of 64; LLaVA-1.5-7B: 32 x 16 x 695 x 4096 x 2 B = 2.9 GB, 11.7 GB at 64). The budget
(`memory_budget`) is a quarter of the accelerator's free memory (about 15 GB on an 80 GB H100 holding a
7B model in bf16), or RESUME_BUDGET_BYTES on the CPU. Inputs beyond it are not kept: a start whose input
was not kept resumes from the nearest kept layer below it, or runs a full forward. The kept keys and
values (2 x layers x batch x tokens x KV heads x head size) come first, when they take at most half
the budget: Qwen2.5-VL-7B (4 KV heads), batch 16: 0.5 GB; LLaVA-1.5-7B (32 KV heads): 5.8 GB.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transformers.cache_utils import Cache, DynamicCache

from interventions.mechanism.locate import locate_heads

RESUME_BUDGET_BYTES = 4 * 2**30  # kept layer inputs per batch on the CPU (see above for the 7B sizes)
DEVICE_SHARE = 0.25  # on an accelerator: this share of its free memory
# A replay from a position must give the clean logits to within this share of their largest magnitude
# (float32: rounding of attention over a shorter query; half types round far more coarsely).
POSITION_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}
HALF_TOLERANCE = 1e-2


@dataclass
class Resumable:
    """One batch's clean forward: its last-position logits and what resuming needs."""

    model: nn.Module
    inputs: Mapping[str, torch.Tensor]
    logits: torch.Tensor  # [B, V] clean logits at the last position
    layers: tuple[nn.Module, ...] = ()
    norm: nn.Module | None = None
    softcap: float | None = None
    calls: list[tuple[tuple, dict]] = field(default_factory=list)  # each layer's call, hidden states left out
    kept: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> its input hidden states
    past: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()  # each layer's clean keys and values, if kept
    cache_names: frozenset[str] = frozenset()  # the keywords that carried the clean forward's cache to the layers
    _causal: dict[tuple[int, int], bool] = field(default_factory=dict)  # (layer, position) -> may replay from it

    def resume_layer(self, start: int) -> int | None:
        """The kept layer a forward for an intervention from layer `start` resumes at (None: a full forward)."""
        return max((layer for layer in self.kept if layer <= start), default=None)

    def last_logits(self, start: int, position: int = 0) -> torch.Tensor:
        """[B, V] logits at the last position with whatever hooks are active, none of which act below
        layer `start` or on queries before `position`: the decoder from the nearest kept layer at or
        below `start` (from `position` on, where `replays_from` allows it), else a full forward."""
        layer = self.resume_layer(start)
        if layer is None:
            return full_last_logits(self.model, self.inputs)
        return self._replay(layer, position if self.replays_from(layer, position) else 0)

    def replays_from(self, layer: int, position: int) -> bool:
        """Whether a replay of layers `layer`.. may start at `position`: keys and values were kept and no
        query before `position` attends to a key at or after it in those layers."""
        if not self.past or not 0 < position < self.inputs["input_ids"].shape[1]:
            return False
        if (layer, position) not in self._causal:
            self._causal[layer, position] = all(_sees_no_later(self.calls[index][1].get("attention_mask"), position)
                                                for index in range(layer, len(self.layers)))
        return self._causal[layer, position]

    def _replay(self, layer: int, position: int) -> torch.Tensor:
        """Layers `layer`.. from the kept input, on the positions from `position` on (0: all of them)."""
        hidden = self.kept[layer][:, position:]
        cache = DynamicCache(ddp_cache_data=[(keys[:, :, :position], values[:, :, :position]) if index >= layer
                                             else (None, None) for index, (keys, values) in enumerate(self.past)]
                             ) if position else None
        for index in range(layer, len(self.layers)):
            args, kwargs = self.calls[index]
            if position:
                args, kwargs = _from_position(args, kwargs, position, cache, self.cache_names,
                                              self.inputs["input_ids"])
            args, kwargs = _with_hidden(args, kwargs, hidden)
            hidden = _output_hidden(self.layers[index](*args, **kwargs))
        return self._head(hidden)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own head: the final norm over every position, then the LM head at the last one."""
        logits = self.model.get_output_embeddings()(self.norm(hidden)[:, -1:, :])
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits[:, -1]


def full_last_logits(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B, V] logits at the last position from a full forward (left padding puts every row's last token there)."""
    return model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]


@torch.no_grad()
def resumable(model: nn.Module, inputs: Mapping[str, torch.Tensor], starts: Iterable[int],
              budget: int | None = None, positions: Iterable[int] = ()) -> Resumable:
    """Run the clean forward on `inputs`, keeping the inputs of the decoder layers in `starts` (as many
    as `budget` bytes hold, default `memory_budget`, spread over them); its logits are `.logits`.
    `positions`: where the interventions' first changed queries are; when one is past the first
    position, each layer's keys and values are kept too (if they fit), for replays from a position."""
    budget = memory_budget(model.device) if budget is None else budget
    layers, norm = decoder_layers(model)
    wanted = sorted(set(starts))
    positions = sorted(p for p in set(positions) if p > 0)
    past_bytes = key_value_bytes(model, *inputs["input_ids"].shape)
    cache = DynamicCache() if positions and wanted and past_bytes <= budget // 2 else None
    budget -= past_bytes if cache is not None else 0
    calls: list[tuple[tuple, dict] | None] = [None] * len(layers)
    kept: dict[int, torch.Tensor] = {}
    state: dict[str, Any] = {"keep": set(), "output": None, "consistent": True, "cache_names": set()}

    def before(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = _input_hidden(args, kwargs)
            if index == 0:  # one layer input's size decides how many fit the budget
                fit = min(len(wanted), budget // (hidden.numel() * hidden.element_size()))
                state["keep"] = {wanted[i * len(wanted) // fit] for i in range(fit)} if fit else set()
            elif not (hidden is state["output"] or torch.equal(hidden, state["output"])):
                state["consistent"] = False  # the decoder changes the hidden states between layers: no replay
            # the clean forward's cache is left out (a replay brings its own, or none); the keyword it came by
            # (`past_key_values`, `cache` in newer transformers) is noted
            state["cache_names"] |= {key for key, value in kwargs.items() if isinstance(value, Cache)}
            calls[index] = _with_hidden(tuple(args), {key: None if isinstance(value, Cache) else value
                                                      for key, value in kwargs.items()}, None)
            if index in state["keep"]:
                kept[index] = hidden
        return hook

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        state["output"] = _output_hidden(output)

    with ExitStack() as hooks:
        for index, layer in enumerate(layers if wanted and norm is not None else ()):
            hooks.callback(layer.register_forward_pre_hook(before(index), with_kwargs=True).remove)
            hooks.callback(layer.register_forward_hook(after).remove)
        logits = (full_last_logits(model, inputs) if cache is None else
                  model(**inputs, use_cache=True, past_key_values=cache, logits_to_keep=1).logits[:, -1])
    resumed = Resumable(model, inputs, logits, layers, norm, None, calls, cache_names=frozenset(state["cache_names"]))
    if not kept or not state["consistent"] or any(call is None for call in calls):
        return resumed
    for softcap in dict.fromkeys((None, getattr(model.config.get_text_config(), "final_logit_softcapping", None))):
        resumed.softcap = softcap
        if torch.equal(resumed._head(state["output"]), logits):
            resumed.kept = kept
            if cache is not None:
                _keep_past(resumed, cache, positions[0])
            return resumed
    return resumed  # the head is not norm -> LM head (-> soft-cap): nothing kept, full forwards


def _keep_past(resumed: Resumable, cache: Cache, position: int) -> None:
    """Keep the clean keys and values when a replay from `position` (the lowest kept layer's) gives the
    clean logits to within the dtype's tolerance; else replays run over every position."""
    length = resumed.inputs["input_ids"].shape[1]
    past = tuple((layer.keys, layer.values) for layer in getattr(cache, "layers", ()))
    if len(past) != len(resumed.layers) or any(keys is None or keys.shape[-2] != length for keys, _ in past):
        return
    resumed.past = past
    layer = min(resumed.kept)
    try:
        replayed = resumed._replay(layer, position) if resumed.replays_from(layer, position) else None
    except (CannotCut, RuntimeError, TypeError, ValueError):  # layers that do not take a cut call: every position
        replayed = None
    scale = float(resumed.logits.abs().max().clamp(min=1.0))
    tolerance = POSITION_TOLERANCE.get(resumed.logits.dtype, HALF_TOLERANCE) * scale
    if replayed is None or not float((replayed - resumed.logits).abs().max()) <= tolerance:
        resumed.past = ()


def key_value_bytes(model: nn.Module, batch: int, tokens: int) -> int:
    """Bytes of every decoder layer's keys and values for `batch` x `tokens` (the KV cache of one prefill)."""
    text = model.config.get_text_config()
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * batch * tokens * kv_heads * head_dim * model.dtype.itemsize


def memory_budget(device: torch.device) -> int:
    """Bytes the kept layer inputs (keys and values too) of one batch may take: DEVICE_SHARE of a CUDA
    device's free memory, else RESUME_BUDGET_BYTES."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * DEVICE_SHARE)
    return RESUME_BUDGET_BYTES


def decoder_layers(model: nn.Module) -> tuple[tuple[nn.Module, ...], nn.Module | None]:
    """(the decoder layers in order: the parents of the located attention modules; the decoder's final
    norm, or None)."""
    names = {id(module): name for name, module in model.named_modules()}
    paths = [names[id(attention)].rsplit(".", 1)[0] for attention in locate_heads(model).attentions]
    layers = tuple(model.get_submodule(path) for path in paths)
    decoder = model.get_submodule(".".join(paths[0].split(".")[:-2]))  # the module holding the layer list
    return layers, getattr(decoder, "norm", None)


def _input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _output_hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class CannotCut(Exception):
    """A layer call has an argument a replay from a position does not know how to cut."""


def _from_position(args: tuple, kwargs: dict, position: int, cache: Cache, cache_names: frozenset[str],
                   ids: torch.Tensor) -> tuple[tuple, dict]:
    """A kept layer call cut to the queries from `position` on, reading earlier keys and values from `cache`
    (passed by the `cache_names` keywords): the mask's query rows, the rotary embeddings' and position ids'
    positions. Any other tensor argument (or a positional one beside the hidden states) raises CannotCut."""
    if any(isinstance(value, (torch.Tensor, Cache)) for value in args[1:]) or not cache_names:
        raise CannotCut
    cut = {}
    for name, value in kwargs.items():
        if name in cache_names:
            cut[name] = cache
        elif name == "attention_mask":
            cut[name] = _mask_from(value, position, ids)
        elif name == "position_embeddings" and isinstance(value, tuple):
            cut[name] = tuple(part[..., position:, :] for part in value)
        elif name == "position_ids" and isinstance(value, torch.Tensor):
            cut[name] = value[..., position:]
        elif name == "cache_position" and isinstance(value, torch.Tensor):
            cut[name] = value[position:]
        elif isinstance(value, torch.Tensor) and name != "hidden_states":
            raise CannotCut
        else:
            cut[name] = value
    return args, cut


def _mask_from(mask: torch.Tensor | None, position: int, ids: torch.Tensor) -> torch.Tensor:
    """The query rows from `position` on of a layer's 4D mask over the prompt `ids` [B, S]; sdpa's implicit
    causal mask (None) made explicit, since `is_causal` aligns a query shorter than its keys top-left."""
    length = ids.shape[1]
    if mask is None:
        queries = torch.arange(position, length, device=ids.device)[:, None]
        return (torch.arange(length, device=ids.device)[None, :] <= queries)[None, None]
    if mask.dim() != 4 or mask.shape[-2] != length:
        raise CannotCut
    return mask[..., position:, :]


def _sees_no_later(mask: torch.Tensor | None, position: int) -> bool:
    """Whether no query before `position` attends to a key at or after it under `mask` (None: causal)."""
    if mask is None:
        return True
    if mask.dim() != 4 or mask.shape[-2] != mask.shape[-1]:
        return False
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return not bool(allowed[..., :position, position:].any())


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor | None) -> tuple[tuple, dict]:
    """A layer call's arguments with `hidden` as its hidden states (None: a call kept without them)."""
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    return (hidden, *args[1:]), kwargs
