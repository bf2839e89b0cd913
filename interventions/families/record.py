"""What modarb knows about one VLM family, as data: a FamilyRecord per model_type.

A record holds what the run-time code reads (where the decoder is, how a prompt stands for an
image, which processor work-around loads it, how lm-eval batches its images), nothing else: the
tiny random-init models the tests build of each family live in interventions/testing/. Code that
used to branch on family names reads the record instead, so a new family is one record and its test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import ProcessorMixin


@dataclass(frozen=True)
class FamilyLayout:
    """How to find a family's decoder self-attention modules."""

    decoder_path: str = "model.language_model"  # dotted attribute path from the top-level model
    out_proj: str = "o_proj"  # the projection whose input columns are the per-head outputs
    attention_attrs: tuple[str, ...] = ("q_proj", "o_proj", "layer_idx", "head_dim")


DEFAULT_LAYOUT = FamilyLayout()


@dataclass(frozen=True)
class FamilyTokens:
    """A family's special tokens. `with_ids`: tokenizer attribute -> (text, config attribute
    holding its id); `free`: tokenizer attribute -> text, for tokens the config gives no id."""

    image: str = "<image>"
    with_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    free: dict[str, str] = field(default_factory=dict)
    # What stands for one image in a plain prompt where it is not `image` itself (the processor
    # expands it; lm-eval's `image_string`). None: the image token's text, lm-eval's own rule.
    image_string: str | None = None
    image_aliases: tuple[str, ...] = ()  # other tokenizer attributes naming the image token

    @property
    def prompt_image(self) -> str:
        """The text of one image in a prompt of this family."""
        return self.image_string or self.image

    @property
    def tokenizer_attributes(self) -> dict[str, str]:
        """tokenizer attribute -> token text, for every special token the family's processor reads."""
        return {"image_token": self.image, **dict.fromkeys(self.image_aliases, self.image),
                **{name: text for name, (text, _) in self.with_ids.items()}, **self.free}


@dataclass(frozen=True)
class FamilyRecord:
    """One VLM family (one config model_type): what the run-time code needs to know."""

    model_type: str
    layout: FamilyLayout = DEFAULT_LAYOUT
    tokens: FamilyTokens = FamilyTokens()
    # Subclass of the stock processor that loads without a video processor, where the stock one
    # demands one (no torchvision here); it saves under the stock class name.
    images_only_processor: type[ProcessorMixin] | None = None
    flat_image_list: bool = False  # lm-eval's HFMultimodalLM gives the processor one flat list of images
