"""Idefics3 (idefics3) and SmolVLM (smolvlm): SigLIP patches pixel-shuffled into few image tokens,
the decoder under `model.text_model`."""

from __future__ import annotations

from transformers import ProcessorMixin, SmolVLMProcessor

from interventions.families.images_only import ImagesOnly
from interventions.families.record import FamilyLayout, FamilyRecord, FamilyTokens


class SmolVLMProcessorImagesOnly(ImagesOnly, SmolVLMProcessor):
    """SmolVLMProcessor without a video processor, hence without `num2words` (only video prompts use it)."""

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template=None, **kwargs):
        # SmolVLMProcessor.__init__ refuses to run without num2words; set what it sets and skip it.
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """The generic template rendering: SmolVLM's own only adds video-sampling defaults."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


_LAYOUT = FamilyLayout(decoder_path="model.text_model")
_TOKENS = FamilyTokens(
    free={
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
    }
)
IDEFICS3 = FamilyRecord(
    model_type="idefics3",
    layout=_LAYOUT,
    tokens=_TOKENS,
)
SMOLVLM = FamilyRecord(
    model_type="smolvlm",
    layout=_LAYOUT,
    tokens=_TOKENS,
    images_only_processor=SmolVLMProcessorImagesOnly,
)

RECORDS = (IDEFICS3, SMOLVLM)
