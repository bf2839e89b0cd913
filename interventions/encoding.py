"""One processor call for a batch of docs, padded on the side the caller needs.

Generation and scoring read the last column, so they pad on the left; training puts labels
after each row's text, so it pads on the right. The tokenizer's own setting is restored after.
"""

from __future__ import annotations

from collections.abc import Sequence

from modarb_tasks.prompts import IMAGE_PLACEHOLDER


def encode_docs_text(processor, texts: Sequence[str], docs: Sequence[dict], padding_side: str):
    """Processor inputs for `texts` (one per doc), with the image of every doc whose prompt has one."""
    tokenizer = processor.tokenizer
    images = [doc["image"] for doc in docs if IMAGE_PLACEHOLDER in doc["prompt"]]
    old_side, tokenizer.padding_side = tokenizer.padding_side, padding_side
    try:
        return processor(text=list(texts), images=images or None, padding="longest", return_tensors="pt")
    finally:
        tokenizer.padding_side = old_side
