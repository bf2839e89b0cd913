"""The organism's tokenizers, trained with `tokenizers` on the `shapes` vocabulary.

Generation 1 (the sentence-level tokenizer, `train_tokenizer`):

One token per sentence ("A small red circle is at the top left.", "What color is the
circle?", the instruction, the constraint) and one per lone word (the answers). Why: with
one token per word, a tiny decoder must chain three attention hops to answer (question word
-> matching context word -> the attribute word beside it) and it does not find that chain
in a CPU budget. Measured here, training a Llama decoder alone on the context-only questions
(batch 48): with word tokens, 2 and 6 layers, head dims 8-32, with and without attention
biases, learning rates 1e-3 to 1.5e-2, word-order curricula and multi-question examples all
sat at 0.6-0.7 validation accuracy after 1500 steps; with this tokenizer the 6-layer decoder
reached 0.92 in 3000 steps (110 s on one thread). A context sentence then carries one whole object, as an image token does, so the
text and the image present the same structure, and the prompt parts the analyses knock out
(instruction, question, constraint) are single tokens. Text outside the generator's
vocabulary becomes <unk>: the organism reads `shapes` prompts only.

Generation 2 (`train_subword_tokenizer`): a lower-cased BPE over words and punctuation, as a
real VLM's tokenizer splits a prompt, so the instruction, context, question and constraint are
spans of many tokens and the chat template's assistant cue ("assistant", ":") sits after the
constraint. Its vocabulary is small enough that rare words of the long instructions become
subwords ("incon", "##sist", ...) while every answer word stays one token. Lower-casing makes
"Trust" and "trust" one token, so a paraphrase built from trained words has no unseen token.

Both: the post-processor adds BOS only: a prompt must end where the answer starts, and the
answer ends with EOS, which is what stops generation.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from interventions.organism.bpe import learn_bpe
from interventions.organism.captions import CAPTION_REQUEST
from modarb_tasks.prompts import IMAGE_PLACEHOLDER, INSTRUCTION_WORDINGS
from modarb_tasks.shapes import sentences, vocabulary, words

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE_PLACEHOLDER)
MODEL_MAX_LENGTH = 512
# A piece is a sentence (up to its closing "." "?" or ":") or a lone word; whitespace between
# pieces is dropped.
PIECE = Regex(r"[^\s.?:][^.?:\n]*[.?:]|[^\s.?:]+")
# The subword tokenizer's size: characters and merges enough for every word of the contexts,
# questions and answers to be one token (measured: at 200 "shows", "objects" and the plurals
# split, at 250 "three" and "triangles"; at 300 only words of the system prompt and the
# constraint's "using" do, and "zero", which no count answers).
SUBWORD_VOCAB_SIZE = 300
SUBWORD_PREFIX = "##"

# Roles the chat template writes; they are words the tokenizer must know.
USER_ROLE, ASSISTANT_ROLE, SYSTEM_ROLE = "USER:", "ASSISTANT:", "SYSTEM:"
_CHAT_TEXTS = (CAPTION_REQUEST, USER_ROLE, ASSISTANT_ROLE, SYSTEM_ROLE)

# Plain "ROLE: text" turns, one per line; images become the literal <image> placeholder the
# processor expands. Content may be a string or a list of typed parts (lm-eval sends parts).
# No BOS here: the tokenizer's post-processor adds it, so a template never doubles it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}SYSTEM: "
    "{% elif message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def train_tokenizer() -> PreTrainedTokenizerFast:
    """The organism's tokenizer: sentence-level over every text the generator and the chat template can emit."""
    corpus = [*words(), *sentences(), *_CHAT_TEXTS]
    return _train(pre_tokenizers.Split(PIECE, behavior="removed", invert=True), corpus)


def train_subword_tokenizer() -> PreTrainedTokenizerFast:
    """The generation-2 tokenizer: BPE over the generator's texts and every instruction wording."""
    normalizer, pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    corpus = [*words(), *sentences(), *_wording_texts(), *_CHAT_TEXTS]
    pieces = [piece for text in corpus for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
    vocab, merges = learn_bpe(pieces, SUBWORD_VOCAB_SIZE, SPECIAL_TOKENS, SUBWORD_PREFIX)
    model = models.BPE(vocab=vocab, merges=merges, unk_token=UNK, continuing_subword_prefix=SUBWORD_PREFIX)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return _wrap(tokenizer)


TOKENIZERS = {"sentence": train_tokenizer, "subword": train_subword_tokenizer}


def build_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """The organism tokenizer named `kind` (a key of TOKENIZERS)."""
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown organism tokenizer {kind!r}; choose one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind]()


def _wording_texts() -> list[str]:
    return [text for sides in INSTRUCTION_WORDINGS.values() for text in sides.values()]


def train_word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the same texts: the vocabulary of the tiny random-init families."""
    return _train(pre_tokenizers.Whitespace(), _word_corpus())


def _word_corpus() -> list[str]:
    return [*vocabulary(), *_CHAT_TEXTS]


def _train(pre_tokenizer, corpus: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    return _wrap(tokenizer)


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """`tokenizer` with the organism's decoder, BOS-only post-processor, specials and chat template."""
    tokenizer.decoder = decoders.WordPiece(prefix=SUBWORD_PREFIX, cleanup=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE_PLACEHOLDER},
        padding_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )
