"""Processors for the tiny random-init models, which have no processor on any hub.

Built offline per family from its record (interventions/families/) and its tiny recipe
(tiny_families/): the `shapes` word-level tokenizer (or a BPE one trained on given texts) laid
out on the model's vocabulary with the family's special tokens at the ids its config names, the
family's own image processor sized to the tiny vision tower, and a chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

from modarb_tasks.errors import ModarbError
from interventions.families import FamilyTokens, get_family
from interventions.mechanism.token_groups import image_token_id
from interventions.organism.tokenizer import BOS, CHAT_TEMPLATE, EOS, PAD, UNK, train_word_tokenizer
from interventions.testing.random_init import build_tiny_model
from interventions.testing.tiny_families import TINY_MODELS
from modarb_tasks.prompts import IMAGE_PLACEHOLDER

# Tokenizer kinds of the tiny families: the shapes word-level one, and two trained on given texts
# (e.g. MC²) the way real VLMs' are: byte-level BPE (Qwen, GPT-2 style: every string encodes) and
# SentencePiece-style BPE over "▁"-marked words without byte fallback (Llama style: unseen
# characters, e.g. Chinese synonyms, are <unk>).
TOKENIZER_KINDS = ("word", "byte_bpe", "sentencepiece")
TRAINED_VOCAB = 1024  # the model's vocabulary is resized to this for the trained kinds
TRAINED_MAX_LENGTH = 2048  # MC² contexts are a paragraph long


def tiny_tokenizer(family: str, config) -> PreTrainedTokenizerFast:
    """The `shapes` word-level tokenizer with every id where `config` expects it.

    The words come from the organism's word-level twin tokenizer; PAD/BOS/EOS and the family's special
    tokens take the ids the config names, other tokens the free ids, and the rest of the
    model's vocabulary is filled with `<unused_N>` so that every id the model can emit decodes.
    """
    tokens = get_family(family).tokens
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
    return _wrap(backend, vocab, tokens, text_config.max_position_embeddings)


def trained_tokenizer(family: str, config, kind: str, texts: list[str]) -> PreTrainedTokenizerFast:
    """A BPE tokenizer of `kind` trained on `texts`, with every special id where `config` expects it
    (the vocabulary size is the config's; random_init models are resized to TRAINED_VOCAB first)."""
    tokens = get_family(family).tokens
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
    return _wrap(rebuilt, vocab, tokens, TRAINED_MAX_LENGTH)


def _wrap(backend: Tokenizer, vocab: dict[str, int], tokens: FamilyTokens, max_length: int) -> PreTrainedTokenizerFast:
    """`backend` with BOS in front of every text, the family's special tokens as attributes and its chat template."""
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=tokens.tokenizer_attributes,
        padding_side="left",
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATE.replace(IMAGE_PLACEHOLDER, tokens.prompt_image),
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
    with `tokenizer` (default: the shapes word-level one): the family's tiny recipe, so that each
    image becomes exactly the image tokens the model's vision tower produces."""
    return TINY_MODELS[get_family(family).model_type].processor(model.config,
                                                                tokenizer or tiny_tokenizer(family, model.config))


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
        processor = build_tiny_processor(family, model,
                                         trained_tokenizer(family, model.config, tokenizer, texts or []))
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
