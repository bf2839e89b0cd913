"""Processors that load offline and without torchvision, and processors for the tiny models.

Two jobs:
1. Without torchvision, transformers has no video processors, and every processor whose
   `__init__` takes a `video_processor` (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, SmolVLM)
   fails its argument check while being built, even for images only. The subclasses below
   take no `video_processor` (so images work, videos are unsupported); they save under the
   stock class name, so a machine with torchvision loads the same folder with AutoProcessor.
   `load_processor` tries AutoProcessor first and falls back to them only for that failure.
2. The tiny random-init models (random_init.py) have no processor on any hub: build one
   offline per family: the `shapes` word-level tokenizer laid out on the model's vocabulary
   with the family's special tokens at the ids its config names, the family's PIL image
   processor sized to the tiny vision tower, and a chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoProcessor,
    CLIPImageProcessorPil,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PaliGemmaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    SiglipImageProcessorPil,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)
from transformers.utils import cached_file

from modarb_tasks.errors import ModarbError
from interventions.organism.tokenizer import BOS, CHAT_TEMPLATE, EOS, PAD, UNK, train_word_tokenizer
from interventions.testing.random_init import TINY_FAMILIES, build_tiny_model
from interventions.mechanism.token_groups import image_token_id
from modarb_tasks.prompts import IMAGE_PLACEHOLDER


# --- 1. image-only processors for machines without torchvision -------------------------------
class _ImagesOnly:
    """Mixin: saves under the stock processor's name (the class after this mixin)."""

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["processor_class"] = _stock_name(type(self))
        return output

    def save_pretrained(self, save_directory, **kwargs):
        saved = super().save_pretrained(save_directory, **kwargs)
        tokenizer_config = Path(save_directory) / "tokenizer_config.json"  # ProcessorMixin wrote our name there
        config = json.loads(tokenizer_config.read_text())
        config["processor_class"] = _stock_name(type(self))
        tokenizer_config.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return saved


def _stock_name(cls: type) -> str:
    return cls.__mro__[2].__name__


class Qwen2VLProcessorImagesOnly(_ImagesOnly, Qwen2VLProcessor):
    """Qwen2VLProcessor without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The stock __init__ passes video_processor=None on; ProcessorMixin pairs positional
        # arguments with this class's attributes (image_processor, tokenizer) and drops it.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLProcessorImagesOnly(_ImagesOnly, Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class LlavaOnevisionProcessorImagesOnly(_ImagesOnly, LlavaOnevisionProcessor):
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


class SmolVLMProcessorImagesOnly(_ImagesOnly, SmolVLMProcessor):
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


IMAGES_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    _stock_name(cls): cls
    for cls in (
        Qwen2VLProcessorImagesOnly,
        Qwen2_5_VLProcessorImagesOnly,
        LlavaOnevisionProcessorImagesOnly,
        SmolVLMProcessorImagesOnly,
    )
}


def load_processor(path: str | Path, trust_remote_code: bool = False, **kwargs) -> ProcessorMixin:
    """AutoProcessor.from_pretrained(path), or, where that fails only because this machine has
    no video processors (no torchvision) or SmolVLM's video-only `num2words`, the images-only
    subclass of the folder's processor class."""
    try:
        return AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)
    except (AttributeError, ImportError, OSError, ValueError) as error:
        videos_only = _is_missing_video_support(error)
        class_name = _saved_processor_class(str(path), kwargs.get("revision")) if videos_only else None
        if class_name not in IMAGES_ONLY_PROCESSORS:
            if "requires the Torchvision library" in str(error):
                raise ModarbError(f"the processor of {path} needs torchvision ({str(error).split()[0]}), which is not "
                                  "installed; install the torchvision build that matches your torch") from None
            raise
    return IMAGES_ONLY_PROCESSORS[class_name].from_pretrained(str(path), **kwargs)


# A folder with a video processor config fails on torchvision, one without on the missing file;
# a stock processor built by hand fails on the video mapping; SmolVLM's __init__ asks for num2words.
_NO_VIDEO_SIGNS = (
    "VideoProcessor requires the Torchvision library",
    "Can't load video processor",
    "VIDEO_PROCESSOR_MAPPING",
    "num2words",
)


def _is_missing_video_support(error: Exception) -> bool:
    return any(sign in str(error) for sign in _NO_VIDEO_SIGNS)


def _saved_processor_class(source: str, revision: str | None) -> str | None:
    """The processor class a local folder or cached hub model names (nothing is downloaded)."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        config = cached_file(source, name, revision=revision, _raise_exceptions_for_missing_entries=False,
                             _raise_exceptions_for_connection_errors=False)
        if config and (value := json.loads(Path(config).read_text()).get("processor_class")):
            return value
    return None


# --- 2. processors for the tiny random-init models -------------------------------------------
@dataclass(frozen=True)
class FamilyTokens:
    """A family's special tokens. `with_ids`: tokenizer attribute -> (text, config attribute
    holding its id); `free`: tokenizer attribute -> text, for tokens the config gives no id."""

    image: str = "<image>"
    with_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    free: dict[str, str] = field(default_factory=dict)
    image_prompt: str = "<image>"  # what stands for one image in a prompt (the processor expands it)


_IDEFICS_TOKENS = FamilyTokens(
    free={
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
    }
)
_QWEN_TOKENS = FamilyTokens(
    image="<|image_pad|>",
    with_ids={
        "video_token": ("<|video_pad|>", "video_token_id"),
        "vision_start_token": ("<|vision_start|>", "vision_start_token_id"),
        "vision_end_token": ("<|vision_end|>", "vision_end_token_id"),
    },
    image_prompt="<|vision_start|><|image_pad|><|vision_end|>",
)
FAMILY_TOKENS: dict[str, FamilyTokens] = {
    "llava": FamilyTokens(),
    "llava_next": FamilyTokens(),
    "llava_onevision": FamilyTokens(with_ids={"video_token": ("<video>", "video_token_index")}),
    "qwen2_vl": _QWEN_TOKENS,
    "qwen2_5_vl": _QWEN_TOKENS,
    "idefics3": _IDEFICS_TOKENS,
    "smolvlm": _IDEFICS_TOKENS,
    "paligemma": FamilyTokens(),
    "gemma3": FamilyTokens(
        image="<image_soft_token>",
        with_ids={
            "boi_token": ("<start_of_image>", "boi_token_index"),
            "eoi_token": ("<end_of_image>", "eoi_token_index"),
        },
        image_prompt="<start_of_image>",
    ),
}


def image_prompt(family: str) -> str:
    """The text that stands for one image in a prompt of `family` (lm-eval's `image_string`)."""
    return _family_tokens(family).image_prompt


def _family_tokens(family: str) -> FamilyTokens:
    if family not in FAMILY_TOKENS:
        raise ModarbError(f"no tiny processor for family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    return FAMILY_TOKENS[family]


def tiny_tokenizer(family: str, config) -> PreTrainedTokenizerFast:
    """The `shapes` word-level tokenizer with every id where `config` expects it.

    The words come from the organism's word-level twin tokenizer; PAD/BOS/EOS and the family's special
    tokens take the ids the config names, other tokens the free ids, and the rest of the
    model's vocabulary is filled with `<unused_N>` so that every id the model can emit decodes.
    """
    tokens = _family_tokens(family)
    text_config = config.get_text_config()
    fixed = _fixed_ids(tokens, config)
    trained = train_word_tokenizer().get_vocab()
    words = [w for w in sorted(trained, key=trained.get) if w not in fixed and w != IMAGE_PLACEHOLDER]
    vocab = _lay_out(fixed, [*words, *tokens.free.values()], text_config.vocab_size)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    specials = [PAD, BOS, EOS, UNK, *fixed, *tokens.free.values()]
    backend.add_special_tokens(list(dict.fromkeys(specials)))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    extra = {"image_token": tokens.image, **{k: t for k, (t, _) in tokens.with_ids.items()}, **tokens.free}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=extra,
        padding_side="left",
        model_max_length=text_config.max_position_embeddings,
        chat_template=CHAT_TEMPLATE.replace(IMAGE_PLACEHOLDER, tokens.image_prompt),
    )


# Tokenizer kinds of the tiny families: the shapes word-level one, and two trained on given texts
# (e.g. MC²) the way real VLMs' are: byte-level BPE (Qwen, GPT-2 style: every string encodes) and
# SentencePiece-style BPE over "▁"-marked words without byte fallback (Llama style: unseen
# characters, e.g. Chinese synonyms, are <unk>).
TOKENIZER_KINDS = ("word", "byte_bpe", "sentencepiece")
TRAINED_VOCAB = 1024  # the model's vocabulary is resized to this for the trained kinds
TRAINED_MAX_LENGTH = 2048  # MC² contexts are a paragraph long


def trained_tokenizer(family: str, config, kind: str, texts: list[str]) -> PreTrainedTokenizerFast:
    """A BPE tokenizer of `kind` trained on `texts`, with every special id where `config` expects it
    (the vocabulary size is the config's; random_init models are resized to TRAINED_VOCAB first)."""
    tokens = _family_tokens(family)
    text_config = config.get_text_config()
    fixed = _fixed_ids(tokens, config)
    specials = list(dict.fromkeys([*fixed, UNK, *tokens.free.values()]))
    backend = Tokenizer(models.BPE(unk_token=None if kind == "byte_bpe" else UNK))
    if kind == "byte_bpe":
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "sentencepiece":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex("\n"), behavior="isolated"), pre_tokenizers.Metaspace(prepend_scheme="first")]
        )
        backend.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = [chr(c) for c in range(32, 127)] + ["\n", "▁"]
    else:
        raise ModarbError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    limit = {} if kind == "byte_bpe" else {"limit_alphabet": len(alphabet)}  # non-ASCII (CJK) stays unknown
    trainer = trainers.BpeTrainer(vocab_size=text_config.vocab_size - len(specials), special_tokens=[],
                                  initial_alphabet=alphabet, **limit)
    backend.train_from_iterator(texts, trainer)
    learned = json.loads(backend.to_str())["model"]
    ordered = sorted(learned["vocab"], key=learned["vocab"].get)
    vocab = _lay_out(fixed, [t for t in ordered if t not in fixed] + [t for t in specials if t not in fixed],
                     text_config.vocab_size)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    model = models.BPE(vocab, merges, unk_token=None if kind == "byte_bpe" else UNK)
    rebuilt = Tokenizer(model)
    rebuilt.pre_tokenizer, rebuilt.decoder = backend.pre_tokenizer, backend.decoder
    rebuilt.add_special_tokens(specials)
    rebuilt.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    extra = {"image_token": tokens.image, **{k: t for k, (t, _) in tokens.with_ids.items()}, **tokens.free}
    return PreTrainedTokenizerFast(
        tokenizer_object=rebuilt, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens=extra, padding_side="left", model_max_length=TRAINED_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE.replace(IMAGE_PLACEHOLDER, tokens.image_prompt),
    )


def _fixed_ids(tokens: FamilyTokens, config) -> dict[str, int]:
    """PAD/BOS/EOS, the image token and the family's other special tokens at the ids `config` names."""
    text_config = config.get_text_config()
    return {
        PAD: text_config.pad_token_id,
        BOS: text_config.bos_token_id,
        EOS: text_config.eos_token_id,
        tokens.image: image_token_id(config),
        **{text: getattr(config, attr) for text, attr in tokens.with_ids.values()},
    }


def _lay_out(fixed: dict[str, int], rest: list[str], vocab_size: int) -> dict[str, int]:
    """token -> id: `fixed` as given, `rest` on the lowest free ids, `<unused_N>` on the others."""
    taken = set(fixed.values())
    free = [i for i in range(vocab_size) if i not in taken]
    if len(rest) > len(free) or len(taken) != len(fixed) or max(taken) >= vocab_size:
        raise ValueError(f"{len(fixed)} fixed and {len(rest)} other tokens do not fit a vocabulary of {vocab_size}")
    vocab = dict(fixed)
    vocab.update(zip(rest, free))
    vocab.update({f"<unused_{i}>": i for i in free[len(rest):]})
    return vocab


def build_tiny_processor(family: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast | None = None
                         ) -> ProcessorMixin:
    """A processor matching `model`, a tiny random-init model of `family` (see random_init.py),
    with `tokenizer` (default: the shapes word-level one).

    Each image becomes exactly the image tokens the model's vision tower produces.
    """
    config = model.config
    tokenizer = tokenizer or tiny_tokenizer(family, config)
    vision = config.vision_config
    side, patch = getattr(vision, "image_size", None), vision.patch_size  # Qwen sizes images by pixel count
    square = {"height": side, "width": side}
    template = tokenizer.chat_template
    if family == "llava":
        return LlavaProcessor(
            image_processor=CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size=square),
            tokenizer=tokenizer, patch_size=patch, chat_template=template,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=1,  # CLIP's CLS token
        )
    if family == "llava_next":
        return LlavaNextProcessor(
            image_processor=LlavaNextImageProcessorPil(
                size={"shortest_edge": side}, crop_size=square, image_grid_pinpoints=config.image_grid_pinpoints
            ),
            tokenizer=tokenizer, patch_size=patch, chat_template=template,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=1,
        )
    if family == "llava_onevision":
        return LlavaOnevisionProcessorImagesOnly(
            image_processor=LlavaOnevisionImageProcessorPil(
                size=square, image_grid_pinpoints=config.image_grid_pinpoints
            ),
            tokenizer=tokenizer, chat_template=template,
            num_image_tokens=(side // patch) ** 2,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            vision_aspect_ratio=config.vision_aspect_ratio,
        )
    if family in ("qwen2_vl", "qwen2_5_vl"):
        pixels = (vision.patch_size * vision.spatial_merge_size * 2) ** 2  # a 2x2 grid of merged patches
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": pixels, "longest_edge": pixels},
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
        )
        cls = Qwen2VLProcessorImagesOnly if family == "qwen2_vl" else Qwen2_5_VLProcessorImagesOnly
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    if family in ("idefics3", "smolvlm"):
        image_processor_cls = Idefics3ImageProcessorPil if family == "idefics3" else SmolVLMImageProcessorPil
        processor_cls = Idefics3Processor if family == "idefics3" else SmolVLMProcessorImagesOnly
        return processor_cls(
            image_processor=image_processor_cls(
                size={"longest_edge": side}, max_image_size={"longest_edge": side}, do_image_splitting=False
            ),
            tokenizer=tokenizer, chat_template=template,
            image_seq_len=(side // patch) ** 2 // config.scale_factor**2,
        )
    if family == "paligemma":
        image_processor = SiglipImageProcessorPil(size=square)
        image_processor.image_seq_length = (side // patch) ** 2
        return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    if family == "gemma3":
        return Gemma3Processor(
            image_processor=Gemma3ImageProcessorPil(size=square, do_pan_and_scan=False),
            tokenizer=tokenizer, chat_template=template, image_seq_length=config.mm_tokens_per_image,
        )
    raise ModarbError(f"no tiny processor for family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")


def save_tiny_family(family: str, out_dir: str | Path, seed: int = 0, attn_implementation: str = "sdpa",
                     tokenizer: str = "word", texts: list[str] | None = None) -> Path:
    """Save a tiny random-init model of `family` with its processor into `out_dir`.

    `tokenizer`: one of TOKENIZER_KINDS; the trained kinds learn `texts` (e.g. MC²'s) and get a
    TRAINED_VOCAB vocabulary and TRAINED_MAX_LENGTH positions. The folder loads back with
    AutoModelForImageTextToText.from_pretrained + load_processor.
    """
    model, _ = build_tiny_model(family, attn_implementation=attn_implementation, seed=seed)
    if tokenizer == "word":
        processor = build_tiny_processor(family, model)
    else:
        model.resize_token_embeddings(TRAINED_VOCAB, mean_resizing=False)
        model.config.get_text_config().max_position_embeddings = TRAINED_MAX_LENGTH
        processor = build_tiny_processor(family, model, trained_tokenizer(family, model.config, tokenizer, texts or []))
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
