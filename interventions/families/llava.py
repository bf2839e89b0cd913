"""LLaVA-1.5 (llava), LLaVA-NeXT (llava_next) and LLaVA-OneVision (llava_onevision)."""

from __future__ import annotations

from transformers import LlavaOnevisionProcessor

from interventions.families.images_only import ImagesOnly
from interventions.families.record import FamilyRecord, FamilyTokens


class LlavaOnevisionProcessorImagesOnly(ImagesOnly, LlavaOnevisionProcessor):
    """LlavaOnevisionProcessor without a video processor."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


LLAVA = FamilyRecord(
    model_type="llava",
    flat_image_list=True,
)

LLAVA_NEXT = FamilyRecord(model_type="llava_next")

LLAVA_ONEVISION = FamilyRecord(
    model_type="llava_onevision",
    tokens=FamilyTokens(with_ids={"video_token": ("<video>", "video_token_index")}),
    images_only_processor=LlavaOnevisionProcessorImagesOnly,
)

RECORDS = (LLAVA, LLAVA_NEXT, LLAVA_ONEVISION)
