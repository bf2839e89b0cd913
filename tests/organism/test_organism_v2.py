"""Organism generation 2: its prompts have a real VLM's token structure, its recipe learns
and is deterministic, and generation 1's recipe still builds the shipped organism."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from interventions.cli.organism import main as organism_main
from interventions.mechanism.token_groups import GROUP_NAMES, doc_token_groups, image_token_id
from interventions.model.encoding import encode_docs_text
from interventions.organism import organism_path
from interventions.organism.answers import chat_prompt
from interventions.organism.bpe import learn_bpe
from interventions.organism.card import write_model_card
from interventions.organism.model import Architecture, build_model, build_processor
from interventions.organism.recipe import GENERATIONS, Mix, Schedule, train
from interventions.organism.tokenizer import train_subword_tokenizer
from modarb_tasks.docs import TASK_KINDS, to_doc
from modarb_tasks.prompts import CONSTRAINT, INSTRUCTION_WORDINGS, TRAINED_WORDINGS
from modarb_tasks.shapes import make_items

V2 = GENERATIONS[2]
MAX_WEIGHT_BYTES = 10 * 1024 * 1024
TINY = dict(hidden=32, layers=2, heads=4, intermediate=64, vision_hidden=32, vision_layers=1, vision_heads=2,
            vision_intermediate=64)


@pytest.fixture(scope="module")
def v2():
    processor = build_processor(V2.arch)
    return processor, build_model(processor, V2.arch, seed=0)


def _groups(processor, model, docs):
    texts = [chat_prompt(processor, doc["prompt"]) for doc in docs]
    encoding = encode_docs_text(processor, texts, docs, padding_side="left")
    return encoding, doc_token_groups(encoding, texts, docs, processor.tokenizer, image_token_id(model.config))


@pytest.mark.parametrize("layout", ["standard", "instruction_after", "system_prompt"])
@pytest.mark.parametrize("wording", [*TRAINED_WORDINGS, "held_out"])
def test_v2_prompt_parts_are_multi_token_spans_and_the_last_position_is_the_assistant_cue(v2, layout, wording):
    processor, model = v2
    docs = [to_doc(item, "follow_text", layout=layout, wording=wording) for item in make_items("test", 6)]
    encoding, groups = _groups(processor, model, docs)
    ids = encoding["input_ids"]
    assert not (ids == processor.tokenizer.unk_token_id).any()
    assert (groups["instruction"].sum(dim=1) >= 3).all() and (groups["constraint"].sum(dim=1) >= 2).all()
    assert (groups["image"].sum(dim=1) == model.config.image_seq_length).all() and model.config.image_seq_length >= 16
    last = groups["last"].nonzero()[:, 1]
    for row, position in enumerate(last.tolist()):
        assert [name for name in GROUP_NAMES if groups[name][row, position]] == ["last"]
        cue = processor.tokenizer.convert_ids_to_tokens(ids[row, position - 1 : position + 1].tolist())
        assert cue == ["assistant", ":"]
        if layout != "instruction_after":
            assert position == groups["constraint"][row].nonzero().max().item() + 2


def test_v2_instruction_comes_last_in_the_instruction_after_layout_yet_the_cue_follows_it(v2):
    processor, model = v2
    docs = [to_doc(item, "follow_image", layout="instruction_after") for item in make_items("test", 4)]
    _, groups = _groups(processor, model, docs)
    for row in range(len(docs)):
        instruction_end = groups["instruction"][row].nonzero().max().item()
        assert groups["constraint"][row].nonzero().max().item() < instruction_end
        assert groups["last"][row].nonzero().item() == instruction_end + 2  # "assistant", ":"


def test_v2_tokenizer_is_reproducible_and_every_answer_is_one_token():
    first, second = train_subword_tokenizer(), train_subword_tokenizer()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert 200 <= len(first) <= 5000
    docs = [to_doc(item, "follow_image") for item in make_items("test", 100)]
    answers = {answer for doc in docs for answer in doc["candidates_follow"] + doc["candidates_compete"]}
    assert {"2", "two", "small", "triangle", "purple"} <= answers
    for answer in answers:
        ids = first(answer, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and first.decode(ids) == answer, answer
    assert first.decode(first("top left", add_special_tokens=False)["input_ids"]) == "top left"
    assert len(first(CONSTRAINT, add_special_tokens=False)["input_ids"]) >= 10  # subwords, not one sentence token


def test_held_out_wording_is_never_trained_yet_made_of_trained_tokens():
    tokenizer = train_subword_tokenizer()
    assert set(V2.mix.wordings) == set(TRAINED_WORDINGS) and "paper" in V2.mix.wordings
    assert "held_out" not in V2.mix.wordings and "held_out" in V2.scored_wordings

    def tokens(texts):
        return {t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"]}

    trained = tokens([*(INSTRUCTION_WORDINGS[name][side] for name in TRAINED_WORDINGS for side in ("image", "text")),
                      CONSTRAINT])
    held_out = tokens(INSTRUCTION_WORDINGS["held_out"].values())
    assert held_out <= trained, tokenizer.convert_ids_to_tokens(sorted(held_out - trained))


def test_learn_bpe_merges_the_most_frequent_pair_and_breaks_ties_alphabetically():
    vocab, merges = learn_bpe(["cd", "ab", "xy", "xy"], vocab_size=10, special_tokens=["<s>"], prefix="##")
    assert merges == [("x", "##y"), ("a", "##b"), ("c", "##d")]
    assert list(vocab)[:2] == ["<s>", "##b"] and list(vocab)[-3:] == ["xy", "ab", "cd"]
    assert learn_bpe(["cd", "ab", "xy", "xy"], 9, ["<s>"], "##")[1] == merges[:2]


def test_v2_meets_the_size_bars(v2):
    processor, model = v2
    text = model.config.text_config
    assert text.num_hidden_layers >= 6 and text.num_attention_heads >= 8
    assert sum(p.numel() * p.element_size() for p in model.parameters()) <= MAX_WEIGHT_BYTES
    assert model.config.image_seq_length == 16 and text.vocab_size == len(processor.tokenizer)


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _tiny_v2_run(folder, seed, steps, batch_size=8, **options):
    arch = Architecture(**TINY, patch=V2.arch.patch, tokenizer=V2.arch.tokenizer)
    schedule = Schedule(steps=steps, batch_size=batch_size, lr=3e-3, warmup=5, train_items=100)
    return train(folder, seed=seed, arch=arch, schedule=schedule, generation=2, eval_items=0, progress=False,
                 threads=None, **options)  # keep the one thread the suite runs with


def test_a_skill_probe_trains_one_kind_and_its_curve_breaks_each_kind_down_by_question_type(tmp_path):
    record = _tiny_v2_run(tmp_path, seed=0, steps=6, only="language_control", batch_size=3, eval_every=3)
    assert record["mix"]["kinds"] == record["mix"]["alignment_kinds"] == {"language_control": 1.0}
    assert record["schedule"]["batch_size"] == 3 and record["schedule"]["steps"] == 6
    assert [point["step"] for point in record["validation_curve"]] == [3, 6]
    counts = Counter(item.question_type for item in make_items("validation", 100))
    for point in record["validation_curve"]:
        assert point["by_question_type"].keys() == set(TASK_KINDS)
        for kind, by_type in point["by_question_type"].items():
            assert by_type.keys() == counts.keys()
            # the breakdown comes from the same answers as the kind's score
            assert sum(by_type[q] * n for q, n in counts.items()) / 100 == pytest.approx(point[kind])
    with pytest.raises(ValueError, match="unknown training kind 'reading'"):
        _tiny_v2_run(tmp_path / "x", seed=0, steps=1, only="reading")


def test_cli_skill_probe_flags_are_checked_before_training(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        organism_main(["train", "--generation", "2", "--only", "reading", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "invalid choice: 'reading'" in capsys.readouterr().err
    assert organism_main(["train", "--generation", "2", "--batch-size", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--batch-size 0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_v2_recipe_trains_and_the_loss_falls(tmp_path):
    record = _tiny_v2_run(tmp_path, seed=3, steps=60)
    assert record["final_loss"] < 0.6 * record["first_loss"], record
    assert record["generation"] == 2 and record["architecture"]["tokenizer"] == "subword"
    assert json.loads((tmp_path / "training.json").read_text())["mix"]["wordings"] == V2.mix.wordings
    card = write_model_card(tmp_path, record).read_text()
    assert "subword BPE" in card and "rely 20%" in card and "--generation 2 --out DIR --seed 3 --steps 60" in card


def test_v2_recipe_is_deterministic_in_its_seed(tmp_path):
    runs = [_tiny_v2_run(tmp_path / name, seed, steps=4, batch_size=4) for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    assert runs[0]["first_loss"] == runs[1]["first_loss"] != runs[2]["first_loss"]
    weights = [_weights(tmp_path / name) for name in ("a", "b", "c")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_generation_1_recipe_is_the_shipped_organism(tmp_path):
    v1 = GENERATIONS[1]
    assert (v1.arch, v1.mix, v1.schedule) == (Architecture(), Mix(), Schedule())
    assert v1.mix.wordings == {"paper": 1.0} and not v1.chat_scores and not v1.scored_wordings
    shipped = organism_path()
    processor = build_processor(v1.arch)
    assert processor.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(shipped).get_vocab()
    recorded = json.loads((shipped / "training.json").read_text())
    assert {k: v for k, v in v1.arch.to_dict().items() if k != "tokenizer"} == recorded["architecture"]
    assert {k: v for k, v in asdict(v1.mix).items() if k != "wordings"} == recorded["mix"]
    assert asdict(v1.schedule) == recorded["schedule"]
    build_model(processor, v1.arch, seed=0).save_pretrained(tmp_path)
    assert {k: v.shape for k, v in _weights(tmp_path).items()} == {k: v.shape for k, v in _weights(shipped).items()}


def test_cli_offers_every_generation_and_refuses_another(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        organism_main(["train", "--generation", str(max(GENERATIONS) + 1), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    for generation in GENERATIONS:
        (tmp_path / "config.json").write_text("{}")
        assert organism_main(["train", "--generation", str(generation), "--out", str(tmp_path)]) == 2  # checked first
