"""Idefics3 (idefics3) and SmolVLM (smolvlm): SigLIP patches pixel-shuffled into few image tokens,
the decoder under `model.text_model`."""

from __future__ import annotations

from transformers import (
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    ProcessorMixin,
    SmolVLMConfig,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
    SmolVLMVisionConfig,
)

from interventions.families.images_only import ImagesOnly
from interventions.families.record import FamilyLayout, FamilyRecord, FamilyTokens, TinyModel
from interventions.families.tiny import IMAGE_SIZE, IMAGE_TOKEN_ID, llama


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
# SigLIP patches of 4 px on a 16 px image, pixel-shuffled by 2 -> 4 tokens.
_VISION = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
               image_size=IMAGE_SIZE, patch_size=4)


def _idefics3_config() -> Idefics3Config:
    return Idefics3Config(
        vision_config=Idefics3VisionConfig(**_VISION), text_config=llama(), image_token_id=IMAGE_TOKEN_ID, scale_factor=2
    )


def _smolvlm_config() -> SmolVLMConfig:
    return SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(**_VISION), text_config=llama(kv_heads=1), image_token_id=IMAGE_TOKEN_ID,
        scale_factor=2,
    )


def _image(config, image_id: int, batch_size: int, pixels) -> tuple[list[int], dict]:
    side = config.vision_config.image_size
    count = (side // config.vision_config.patch_size) ** 2 // config.scale_factor**2
    return [image_id] * count, {"pixel_values": pixels(batch_size, 1, 3, side, side)}


def _processor(processor_cls: type, image_processor_cls: type):
    def build(config, tokenizer):
        side, patch = config.vision_config.image_size, config.vision_config.patch_size
        return processor_cls(
            image_processor=image_processor_cls(
                size={"longest_edge": side}, max_image_size={"longest_edge": side}, do_image_splitting=False
            ),
            tokenizer=tokenizer, chat_template=tokenizer.chat_template,
            image_seq_len=(side // patch) ** 2 // config.scale_factor**2,
        )

    return build


IDEFICS3 = FamilyRecord(
    model_type="idefics3",
    tiny=TinyModel(config=_idefics3_config, image_block=_image,
                   processor=_processor(Idefics3Processor, Idefics3ImageProcessorPil)),
    layout=_LAYOUT,
    tokens=_TOKENS,
)
SMOLVLM = FamilyRecord(
    model_type="smolvlm",
    tiny=TinyModel(config=_smolvlm_config, image_block=_image,
                   processor=_processor(SmolVLMProcessorImagesOnly, SmolVLMImageProcessorPil)),
    layout=_LAYOUT,
    tokens=_TOKENS,
    images_only_processor=SmolVLMProcessorImagesOnly,
)

RECORDS = (IDEFICS3, SMOLVLM)
