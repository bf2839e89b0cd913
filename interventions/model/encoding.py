"""Prompts -> processor inputs, one way for `hf-modarb` and for the analyses.

`hf-modarb` (lm.py) and the analyses (analysis/batches.py) both call `encode_multimodal`, so the
text a model sees under identify / flow is the text lm-eval scores: the doc's literal "<image>"
replaced by the model's own image string (unless a chat template already placed the image), the
processor called once per batch with padding, and the processor's training-only `labels` dropped.

The image string: `image_string=` if the caller gives one, else the family record's image string
where it differs from the bare image token (Qwen2-VL / 2.5-VL wrap `<|image_pad|>` in vision
start/end, Gemma 3's processor expands its begin-of-image token), else the config's image token
as text (lm-eval's own rule).

`encode_docs_text` is the organism's older helper (training and greedy answers, LLaVA only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from lm_eval.models.utils import flatten_image_list, replace_placeholders

from interventions.families import FAMILIES, family_record
from modarb_tasks.prompts import IMAGE_PLACEHOLDER

# model_type -> the text standing for one image in a plain (no chat template) prompt, where it is
# not the image token itself (the processors expand these; the chat templates render the same).
IMAGE_STRINGS = {record.model_type: record.tokens.image_string for record in FAMILIES if record.tokens.image_string}


def image_string(config, tokenizer, override: str | None = None, image_token_id: int | None = None) -> str:
    """What replaces "<image>" in a plain prompt of this model (see the module docstring)."""
    if override:
        return override
    if image_token_id is None and config.model_type in IMAGE_STRINGS:
        return IMAGE_STRINGS[config.model_type]
    token = image_token_id
    if token is None:
        token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    return tokenizer.decode([int(token)], skip_special_tokens=False)


def model_string(text: str, image_text: str, chat_applied: bool = False, max_images: int = 999) -> str:
    """The string the processor gets for `text` (a doc prompt, or a chat-templated context)."""
    return text if chat_applied else replace_placeholders(text, IMAGE_PLACEHOLDER, image_text, max_images)


def encode_multimodal(
    processor,
    model_type: str,
    strings: Sequence[str],
    images: Sequence[Sequence],
    *,
    image_text: str,
    chat_applied: bool = False,
    max_images: int = 999,
    rgb: bool = False,
    padding_side: str = "left",
    truncation: bool = False,
):
    """(processor output, the strings it was given) for `strings` with `images[i]` for row i.

    lm-eval's HFMultimodalLM.tok_batch_multimodal_encode, minus the device move and truncation
    the caller does: placeholder replacement, image cap, RGB option, LLaVA's flat image list.
    """
    texts = [model_string(s, image_text, chat_applied, max_images) for s in strings]
    images = [list(row)[:max_images] for row in images]
    if rgb:
        images = [[image.convert("RGB") for image in row] for row in images]
    record = family_record(model_type)
    if record and record.flat_image_list:  # lm-eval's rule for LLaVA
        images = flatten_image_list(images)
    with padded_on(processor.tokenizer, padding_side):
        encoding = processor(images=images, text=texts, truncation=truncation, padding="longest", return_tensors="pt")
    encoding.pop("labels", None)  # PaliGemma builds training labels; a forward would compute a loss on them
    return encoding, texts


def encode_text(tokenizer, strings: Sequence[str], padding_side: str = "left"):
    """Text-only rows as hf-modarb encodes them (lm-eval's HFLM.tok_batch_encode): the tokenizer alone,
    since some processors (PaliGemma) refuse a prompt without an image."""
    with padded_on(tokenizer, padding_side):
        return tokenizer(list(strings), padding="longest", return_tensors="pt")


def encode_docs_text(processor, texts: Sequence[str], docs: Sequence[dict], padding_side: str):
    """Processor inputs for `texts` (one per doc), with the image of every doc whose prompt has one."""
    images = [doc["image"] for doc in docs if IMAGE_PLACEHOLDER in doc["prompt"]]
    with padded_on(processor.tokenizer, padding_side):
        return processor(text=list(texts), images=images or None, padding="longest", return_tensors="pt")


@contextmanager
def padded_on(tokenizer, side: str) -> Iterator[None]:
    """The tokenizer pads on `side` within the block, and on its own side again after it."""
    old_side, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        yield
    finally:
        tokenizer.padding_side = old_side
