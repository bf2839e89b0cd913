from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from interventions.mechanism.token_groups import GROUP_NAMES, EmptyGroupError, image_token_id, require_groups, token_groups
from modarb_tasks.prompts import IMAGE_PLACEHOLDER, build_prompt

IMAGE_TOKENS = 5  # how many tokens the fake processor expands "<image>" into


def _prompts():
    return [
        build_prompt(question="What color is the ball?", context="The ball is red.", instruction_side="image"),
        build_prompt(question="How many cats are there?", context="There are 3 cats.", instruction_side="text",
                     layout="instruction_after"),
        build_prompt(question="What shape is it?", context="It is a cube.", instruction_side="image",
                     layout="system_prompt"),
    ]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over the test prompts' words, built offline."""
    splitter = pre_tokenizers.Whitespace()
    words = {w for p in _prompts() for w, _ in splitter.pre_tokenize_str(p.text)} | {"USER", "ASSISTANT", ":"}
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "<unk>", IMAGE_PLACEHOLDER, *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", unk_token="<unk>",
                                   additional_special_tokens=[IMAGE_PLACEHOLDER])


def _process(tokenizer, texts: list[str], padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Like a VLM processor: chat roles around the prompt, BOS, "<image>" expanded, padded."""
    rows = []
    for text in texts:
        expanded = f"USER: {text.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * IMAGE_TOKENS)} ASSISTANT:"
        rows.append([tokenizer.bos_token_id, *tokenizer(expanded, add_special_tokens=False)["input_ids"]])
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[b, span] = torch.tensor(row)
        attention[b, span] = 1
    return ids, attention


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_groups_cover_exactly_their_prompt_parts(tokenizer, padding_side):
    prompts = _prompts()
    ids, attention = _process(tokenizer, [p.text for p in prompts], padding_side)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    groups = token_groups(ids, attention, [p.text for p in prompts], [p.spans for p in prompts], tokenizer, image_id)
    assert set(groups) == set(GROUP_NAMES)
    splitter = pre_tokenizers.Whitespace()
    for row, prompt in enumerate(prompts):
        for name in ("system", "context", "instruction", "question", "constraint"):
            start, end = prompt.spans[name]
            words = [w for w, _ in splitter.pre_tokenize_str(prompt.text[start:end])]
            got = tokenizer.convert_ids_to_tokens(ids[row][groups[name][row]].tolist())
            assert got == words, (row, name)
        assert groups["image"][row].sum() == IMAGE_TOKENS
        assert (ids[row][groups["image"][row]] == image_id).all()
        attended = attention[row].nonzero().flatten()
        assert groups["last"][row].nonzero().flatten().tolist() == [attended[-1].item()]
    # padding, BOS and the chat-role tokens belong to no group
    grouped = torch.stack([groups[n] for n in GROUP_NAMES if n != "last"]).any(0)
    outside = ids[~grouped & attention.bool()]
    assert sorted(set(tokenizer.convert_ids_to_tokens(outside.tolist()))) == [":", "<s>", "ASSISTANT", "USER"]
    assert not grouped[~attention.bool()].any()
    assert groups["system"][0].sum() == 0 and groups["system"][2].sum() > 0  # only the system_prompt layout


def test_image_token_id_reads_either_config_name():
    class Config:
        image_token_index = 7

    assert image_token_id(Config()) == 7


def test_an_empty_group_that_is_needed_is_a_clear_error(tokenizer):
    prompts = [_prompts()[0], build_prompt(question="What color is the ball?", context="The ball is red.",
                                           instruction_side="image", with_image=False)]
    ids, attention = _process(tokenizer, [p.text for p in prompts], "left")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    groups = token_groups(ids, attention, [p.text for p in prompts], [p.spans for p in prompts], tokenizer, image_id)
    require_groups(groups, ["context", "instruction", "last"], needed_by="knockout image->instruction")
    with pytest.raises(EmptyGroupError) as err:
        require_groups(groups, ["instruction", "image"], needed_by="knockout image->instruction")
    assert str(err.value) == (
        "token group 'image' is empty in prompt 1 of the batch but knockout image->instruction needs it; "
        "use a task whose prompts contain that part"
    )


def test_unknown_group_name_is_a_clear_error():
    with pytest.raises(ValueError) as err:
        require_groups({}, ["vision"], needed_by="a spec")
    assert str(err.value) == (
        "unknown token group 'vision'; choose one of system, image, context, instruction, question, constraint, last"
    )
