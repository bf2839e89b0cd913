"""The bundled organism: the recipe learns, the shipped weights load offline and meet the organism's bars (both controls ≥ 0.90, a learned image preference)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from interventions.organism import organism_path
from interventions.organism.answers import accuracy, generate_answers, normalise
from interventions.cli.organism import main as organism_main
from interventions.organism.model import Architecture
from interventions.organism.recipe import Schedule, score, train
from interventions.organism.tokenizer import train_tokenizer
from modarb_tasks.docs import to_doc
from modarb_tasks.shapes import make_items

MAX_FOLDER_BYTES = 10 * 1024 * 1024
TEST_ITEMS = 500  # the whole test split: the same items the model card reports


@pytest.fixture(scope="module")
def shipped():
    path = organism_path()
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def shipped_scores(shipped):
    """The shipped weights on the whole test split: the numbers of the model card (the slow tests read them)."""
    return score(*shipped, make_items("test", TEST_ITEMS), batch_size=100)


def test_recipe_runs_and_loss_falls(tmp_path):
    tiny = Architecture(hidden=32, layers=2, heads=4, intermediate=64, vision_hidden=32, vision_layers=1,
                        vision_heads=2, vision_intermediate=64)
    schedule = Schedule(steps=40, batch_size=8, lr=3e-3, warmup=5, train_items=100)
    record = train(tmp_path, seed=3, arch=tiny, schedule=schedule, eval_items=0, progress=False, threads=None)
    assert record["final_loss"] < 0.6 * record["first_loss"], record
    assert json.loads((tmp_path / "training.json").read_text())["steps"] == 40
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tmp_path), LlavaForConditionalGeneration)


def test_shipped_weights_load_offline_with_enough_heads(shipped):
    model, processor = shipped
    assert isinstance(model, LlavaForConditionalGeneration)
    text = model.config.text_config
    assert text.num_hidden_layers >= 6 and text.num_attention_heads >= 8
    files = list(organism_path().iterdir())
    assert sum(f.stat().st_size for f in files) <= MAX_FOLDER_BYTES
    assert {"model.safetensors", "README.md", "config.json"} <= {f.name for f in files}
    assert not [f for f in files if f.suffix in (".bin", ".pkl", ".pt")]
    ids = processor(text=["<image>\nWhat color is the circle?"], images=[make_items("test", 1)[0].image])["input_ids"]
    assert list(ids[0]).count(model.config.image_token_index) == model.config.image_seq_length


@pytest.mark.slow
def test_shipped_organism_meets_the_bars(shipped_scores):
    s = shipped_scores
    assert s["visual_control"] >= 0.90 and s["language_control"] >= 0.90, s
    strong, weak = sorted((s["follow_image"], s["follow_text"]), reverse=True)
    assert strong >= 0.90 and 0.55 <= weak < 0.90, s


@pytest.mark.slow
def test_model_card_reports_the_measured_scores(shipped_scores):
    recorded = json.loads((organism_path() / "training.json").read_text())
    assert recorded["test_items"] == TEST_ITEMS
    for kind, value in shipped_scores.items():
        assert recorded["scores"][kind] == pytest.approx(value, abs=1e-9), kind
    assert f"| {shipped_scores['follow_image']:.3f} | {shipped_scores['follow_text']:.3f} |" in (
        organism_path() / "README.md"
    ).read_text()


def test_chat_template_prompts_are_answered_as_well_as_raw_ones(shipped):
    docs = [to_doc(item, "visual_control") for item in make_items("test", 128)]
    raw = accuracy(generate_answers(*shipped, docs, batch_size=64), docs)
    chat = accuracy(generate_answers(*shipped, docs, batch_size=64, apply_chat_template=True), docs)
    assert raw >= 0.85 and chat >= raw - 0.05, (raw, chat)


def test_tokenizer_makes_each_generator_sentence_and_answer_one_token():
    tokenizer = train_tokenizer()
    doc = to_doc(make_items("test", 1)[0], "follow_text")
    encoded = tokenizer(doc["prompt"], return_offsets_mapping=True)
    assert tokenizer.unk_token_id not in encoded["input_ids"]
    for part in ("instruction", "question", "constraint"):
        start, end = doc["spans"][part]
        assert [span for span in encoded["offset_mapping"] if start <= span[0] < end] == [(start, end)], part
    context_tokens = [span for span in encoded["offset_mapping"] if doc["spans"]["context"][0] <= span[0] < doc["spans"]["context"][1]]
    assert len(context_tokens) == 2 + doc["context"].count(" is at the ")  # "Text Context:", the header, one per object
    for answer in ("purple", "triangle", "small", "3", "three"):
        assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer("Hello there, what is this?", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_normalise_ignores_case_space_and_punctuation():
    assert normalise("  Red. ") == "red" and normalise("top  Left") == "top left"


def test_cli_prints_the_path_and_refuses_to_overwrite(capsys, tmp_path):
    assert organism_main(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(organism_path())
    (tmp_path / "config.json").write_text("{}")
    assert organism_main(["train", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"modarb: error: {tmp_path} already holds a model; choose another --out or pass --force to overwrite it"
    )
