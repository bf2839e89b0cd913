"""The organism's word-level tokenizer, trained with `tokenizers` on the `shapes` vocabulary.

Word-level keeps prompts short (one token per word or punctuation mark), so a tiny decoder
reads the whole prompt cheaply. The post-processor adds BOS only: a prompt must end where
the answer starts, and the answer ends with EOS, which is what stops generation.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from interventions.organism.captions import CAPTION_REQUEST
from modarb_tasks.prompts import IMAGE_PLACEHOLDER
from modarb_tasks.shapes import vocabulary

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE_PLACEHOLDER)
MODEL_MAX_LENGTH = 512

# Roles the chat template writes; they are words the tokenizer must know.
USER_ROLE, ASSISTANT_ROLE, SYSTEM_ROLE = "USER:", "ASSISTANT:", "SYSTEM:"

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
    """A word-level tokenizer over every text the generator and the chat template can emit."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    corpus = [*vocabulary(), CAPTION_REQUEST, USER_ROLE, ASSISTANT_ROLE, SYSTEM_ROLE]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
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
