"""Load a VLM and its processor for the analyses: the bundled organism unless told otherwise.

Local folders and hub ids load the same way; nothing here asks the hub when HF_HUB_OFFLINE=1
is set, and remote code stays off unless the caller turns it on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from modarb_tasks.errors import ModarbError
from interventions.model.model_files import check_device, check_pretrained
from interventions.organism import organism_path
from interventions.model.processors import load_processor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Every command loads with this attention backend unless told otherwise (hf-modarb: attn_implementation=), so an
# analysis scores the same model whichever command runs it; knockouts need a mask-based backend.
DEFAULT_ATTENTION = "sdpa"


def load_model(
    pretrained: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    attn_implementation: str = DEFAULT_ATTENTION,
    trust_remote_code: bool = False,
    config=None,
    processor=None,
):
    """(model in eval mode, processor) for `pretrained` (default: the bundled organism). `config` and
    `processor`: the ones a caller already read from it (to check its data before the weights load), used
    instead of reading them again."""
    source = str(organism_path() if pretrained is None else pretrained)
    if dtype not in DTYPES:
        raise ModarbError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    check_device(device)
    check_pretrained(source, trust_remote_code=trust_remote_code)
    try:
        processor = processor or load_processor(source, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            config=config,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
    except OSError as error:
        raise ModarbError(
            f"cannot load model {source!r}: {str(error).splitlines()[0]} "
            "(give a local folder saved with save_pretrained, or a hub id already in the cache)"
        ) from None
    return model.to(device).eval(), processor

