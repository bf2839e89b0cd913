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

Memory: one kept layer input is batch x tokens x hidden x bytes; Qwen2.5-VL-7B, every one of its 28
layers, a batch of 16 prompts of 550 tokens in bf16: 28 x 16 x 550 x 3584 x 2 B = 1.77 GB (7.1 GB at
reproduce's batch of 64; LLaVA-1.5-7B: 32 x 16 x 695 x 4096 x 2 B = 2.9 GB, 11.7 GB at 64). The budget
(`memory_budget`) is a quarter of the accelerator's free memory (about 15 GB on an 80 GB H100 holding a
7B model in bf16), or RESUME_BUDGET_BYTES on the CPU. Inputs beyond it are not kept: a start whose input
was not kept resumes from the nearest kept layer below it, or runs a full forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from interventions.mechanism.locate import locate_heads

RESUME_BUDGET_BYTES = 4 * 2**30  # kept layer inputs per batch on the CPU (see above for the 7B sizes)
DEVICE_SHARE = 0.25  # on an accelerator: this share of its free memory


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

    def resume_layer(self, start: int) -> int | None:
        """The kept layer a forward for an intervention from layer `start` resumes at (None: a full forward)."""
        return max((layer for layer in self.kept if layer <= start), default=None)

    def last_logits(self, start: int) -> torch.Tensor:
        """[B, V] logits at the last position with whatever hooks are active, none of which act below
        layer `start`: the decoder from the nearest kept layer at or below it, else a full forward."""
        layer = self.resume_layer(start)
        if layer is None:
            return full_last_logits(self.model, self.inputs)
        hidden = self.kept[layer]
        for index in range(layer, len(self.layers)):
            args, kwargs = _with_hidden(*self.calls[index], hidden)
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
              budget: int | None = None) -> Resumable:
    """Run the clean forward on `inputs`, keeping the inputs of the decoder layers in `starts` (as many
    as `budget` bytes hold, default `memory_budget`, spread over them); its logits are `.logits`."""
    budget = memory_budget(model.device) if budget is None else budget
    layers, norm = decoder_layers(model)
    wanted = sorted(set(starts))
    calls: list[tuple[tuple, dict] | None] = [None] * len(layers)
    kept: dict[int, torch.Tensor] = {}
    state: dict[str, Any] = {"keep": set(), "output": None, "consistent": True}

    def before(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = _input_hidden(args, kwargs)
            if index == 0:  # one layer input's size decides how many fit the budget
                fit = min(len(wanted), budget // (hidden.numel() * hidden.element_size()))
                state["keep"] = {wanted[i * len(wanted) // fit] for i in range(fit)} if fit else set()
            elif not (hidden is state["output"] or torch.equal(hidden, state["output"])):
                state["consistent"] = False  # the decoder changes the hidden states between layers: no replay
            calls[index] = _with_hidden(tuple(args), dict(kwargs), None)
            if index in state["keep"]:
                kept[index] = hidden
        return hook

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        state["output"] = _output_hidden(output)

    with ExitStack() as hooks:
        for index, layer in enumerate(layers if wanted and norm is not None else ()):
            hooks.callback(layer.register_forward_pre_hook(before(index), with_kwargs=True).remove)
            hooks.callback(layer.register_forward_hook(after).remove)
        logits = full_last_logits(model, inputs)
    resumed = Resumable(model, inputs, logits, layers, norm, None, calls)
    if not kept or not state["consistent"] or any(call is None for call in calls):
        return resumed
    for softcap in dict.fromkeys((None, getattr(model.config.get_text_config(), "final_logit_softcapping", None))):
        resumed.softcap = softcap
        if torch.equal(resumed._head(state["output"]), logits):
            resumed.kept = kept
            return resumed
    return resumed  # the head is not norm -> LM head (-> soft-cap): nothing kept, full forwards


def memory_budget(device: torch.device) -> int:
    """Bytes the kept layer inputs of one batch may take: DEVICE_SHARE of a CUDA device's free memory,
    else RESUME_BUDGET_BYTES."""
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


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor | None) -> tuple[tuple, dict]:
    """A layer call's arguments with `hidden` as its hidden states (None: a call kept without them)."""
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    return (hidden, *args[1:]), kwargs
