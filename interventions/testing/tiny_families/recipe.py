"""TinyModel: how the test suite builds a tiny random-init model of one family, its inputs and its processor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerFast, ProcessorMixin

PixelMaker = Callable[..., torch.Tensor]  # random pixels of a given shape (the test batch's generator)


@dataclass(frozen=True)
class TinyModel:
    """The recipe of one family's tiny model.

    config: the tiny config (real config class, a few layers and heads, milliseconds a forward).
    image_block: (config, image token id, batch size, pixels) -> (the token ids of one image in a
        prompt, with the family's delimiters; the pixel inputs of one image per row), for
        random_init.random_batch.
    processor: (config, tokenizer) -> a processor whose images become exactly the image tokens the
        tiny vision tower produces (the family's image processor class, sized to the tower).
    type_ids: (input ids, image token id, image block length) -> the token type inputs the family's
        processor emits, where it emits any.
    """

    config: Callable[[], PretrainedConfig]
    image_block: Callable[[PretrainedConfig, int, int, PixelMaker], tuple[list[int], dict[str, torch.Tensor]]]
    processor: Callable[[PretrainedConfig, PreTrainedTokenizerFast], ProcessorMixin]
    type_ids: Callable[[torch.Tensor, int, int], dict[str, torch.Tensor]] | None = None
