"""Offline processors: tiny random-init models of every family save, load back and run on a
`shapes` doc; folders whose stock processor needs video support load without torchvision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLImageProcessorPil, Qwen2VLProcessor
from transformers.utils import is_torchvision_available

from modarb_tasks.errors import ModarbError
from interventions.model.loading import load_model
from interventions.families import FAMILY_TOKENS, image_prompt
from interventions.organism.tokenizer import train_tokenizer, train_word_tokenizer
from interventions.model.processors import IMAGES_ONLY_PROCESSORS, Qwen2VLProcessorImagesOnly, load_processor
from interventions.testing.random_init import TINY_FAMILIES, build_tiny_model, random_batch
from interventions.testing.tiny_processors import build_tiny_processor, save_tiny_family
from interventions.mechanism.token_groups import image_token_id, token_groups
from interventions.testing.smoke import make_smoke_entries, model_args
from modarb_tasks.docs import to_doc
from modarb_tasks.prompts import IMAGE_PLACEHOLDER, INSTRUCTIONS
from modarb_tasks.shapes import make_items

NO_TORCHVISION = pytest.mark.skipif(is_torchvision_available(), reason="the failure only happens without torchvision")
# Families whose stock processor takes a video processor (the images-only subclass loads them here).
VIDEO_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "llava_onevision", "smolvlm", "internvl"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Every family's tiny model + processor, saved once for the module."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: save_tiny_family(family, root / family) for family in TINY_FAMILIES}


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    """Two follow-image docs of different scenes (so their images differ)."""
    return [to_doc(item, "follow_image") for item in make_items("test", 2)]


def _encode(processor, family: str, doc: dict, image=None) -> dict:
    text = doc["prompt"].replace(IMAGE_PLACEHOLDER, image_prompt(family))
    return processor(text=[text], images=[[image or doc["image"]]], return_tensors="pt")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_saved_folder_loads_back_with_the_same_weights_and_token_ids(family, saved):
    model = AutoModelForImageTextToText.from_pretrained(saved[family])
    built, _ = build_tiny_model(family, seed=0)
    reloaded, original = model.state_dict(), built.state_dict()
    assert reloaded.keys() == original.keys()
    assert all(torch.equal(reloaded[k], original[k]) for k in original)

    processor = load_processor(saved[family])
    assert (type(processor) in IMAGES_ONLY_PROCESSORS.values()) == (family in VIDEO_FAMILIES)
    tokenizer, config = processor.tokenizer, model.config
    assert tokenizer.convert_tokens_to_ids(FAMILY_TOKENS[family].image) == image_token_id(config)
    for text, attr in FAMILY_TOKENS[family].with_ids.values():
        assert tokenizer.convert_tokens_to_ids(text) == getattr(config, attr)
    text_config = config.get_text_config()
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        text_config.pad_token_id, text_config.bos_token_id, text_config.eos_token_id)
    # Every id the model can emit is a token, and every word of the shapes tokenizer keeps its text.
    assert None not in tokenizer.convert_ids_to_tokens(list(range(text_config.vocab_size)))
    words = set(train_word_tokenizer().get_vocab()) - {IMAGE_PLACEHOLDER}
    assert words <= set(tokenizer.get_vocab())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_processor_output_runs_forward_and_generate_and_the_image_matters(family, saved, docs):
    model = AutoModelForImageTextToText.from_pretrained(saved[family]).eval()
    processor = load_processor(saved[family])
    encoding = _encode(processor, family, docs[0])
    assert int((encoding["input_ids"] == image_token_id(model.config)).sum()) > 0
    assert int((encoding["input_ids"] == processor.tokenizer.unk_token_id).sum()) == 0  # the prompt is all known words

    logits = model(**encoding).logits
    assert logits.shape == (1, encoding["input_ids"].shape[1], model.config.get_text_config().vocab_size)
    other_image = model(**_encode(processor, family, docs[0], image=docs[1]["image"])).logits
    assert not torch.allclose(logits[0, -1], other_image[0, -1])  # pixels reach the text positions

    generated = model.generate(**encoding, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    new = generated[0, encoding["input_ids"].shape[1]:]
    assert len(new) == 3
    assert new[0].item() == logits[0, -1].argmax().item()  # greedy generate starts from the forward's argmax
    assert all(isinstance(t, str) for t in processor.tokenizer.convert_ids_to_tokens(new.tolist()))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_chat_template_puts_the_family_image_text_where_the_image_goes(family, saved, docs):
    processor = load_processor(saved[family])
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": docs[0]["question"]}]}]
    rendered = processor.apply_chat_template(message, add_generation_prompt=True)
    assert rendered == f"USER: {image_prompt(family)}{docs[0]['question']}\nASSISTANT:"
    chat = processor(text=[rendered], images=[[docs[0]["image"]]], return_tensors="pt")["input_ids"]
    plain = _encode(processor, family, docs[0])["input_ids"]
    image_id = processor.tokenizer.convert_tokens_to_ids(FAMILY_TOKENS[family].image)
    assert (chat == image_id).sum() == (plain == image_id).sum()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_token_groups_find_image_instruction_and_question(family, saved, docs):
    processor = load_processor(saved[family])
    doc = docs[0]
    encoding = _encode(processor, family, doc)
    image_id = processor.tokenizer.convert_tokens_to_ids(FAMILY_TOKENS[family].image)
    groups = token_groups(encoding["input_ids"], encoding["attention_mask"], [doc["prompt"]], [doc["spans"]],
                          processor.tokenizer, image_id)
    ids = encoding["input_ids"][0]
    assert groups["image"][0].sum() == (ids == image_id).sum() > 0
    for name, text in (("instruction", INSTRUCTIONS["image"]), ("question", doc["question"])):
        words = processor.tokenizer.convert_ids_to_tokens(ids[groups[name][0]].tolist())
        assert words == processor.tokenizer.tokenize(text)  # exactly the part's tokens, in order


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_processor_and_the_random_batch_give_an_image_the_same_image_tokens(family, saved, docs):
    """A record's two tiny recipes agree: its processor and its image block (random_batch) size an image alike."""
    model = AutoModelForImageTextToText.from_pretrained(saved[family])
    image_id = image_token_id(model.config)
    processed = _encode(load_processor(saved[family]), family, docs[0])["input_ids"]
    batch_ids = random_batch(model, batch_size=1)["input_ids"]
    assert (processed == image_id).sum() == (batch_ids == image_id).sum() > 1


def test_internvl_expands_an_image_into_context_tokens_between_img_tags(saved, docs):
    processor = load_processor(saved["internvl"])
    tokens = processor.tokenizer.convert_ids_to_tokens(_encode(processor, "internvl", docs[0])["input_ids"][0].tolist())
    start = tokens.index("<img>")
    assert tokens[start:start + 6] == ["<img>", *["<IMG_CONTEXT>"] * 4, "</img>"] and tokens.count("<IMG_CONTEXT>") == 4
    assert json.loads((saved["internvl"] / "processor_config.json").read_text())["processor_class"] == "InternVLProcessor"
    assert model_args("internvl") == "pretrained=tiny-internvl"  # lm-eval's rule gives <IMG_CONTEXT>, what it expands


@NO_TORCHVISION
def test_qwen2_vl_folder_needs_the_workaround_without_torchvision(saved):
    folder = saved["qwen2_vl"]
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    assert json.loads((folder / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    with pytest.raises(OSError, match="Can't load video processor"):
        AutoProcessor.from_pretrained(folder)
    processor = load_processor(folder)
    assert type(processor) is Qwen2VLProcessorImagesOnly
    assert processor.image_token == "<|image_pad|>" and processor.image_processor.patch_size == 4


@NO_TORCHVISION
def test_qwen2_vl_hub_style_folder_with_a_video_config_loads_images_only(saved, tmp_path, docs):
    """A hub folder also lists a video processor: AutoProcessor then fails on torchvision."""
    folder = tmp_path / "hub-like"
    folder.mkdir()
    for file in saved["qwen2_vl"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "processor_config.json").read_text())
    config["video_processor"] = {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 4}
    (folder / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ImportError, match="Qwen2VLVideoProcessor requires the Torchvision library"):
        AutoProcessor.from_pretrained(folder)
    processor = load_processor(folder)
    reference = load_processor(saved["qwen2_vl"])
    got, want = _encode(processor, "qwen2_vl", docs[0]), _encode(reference, "qwen2_vl", docs[0])
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@NO_TORCHVISION
def test_stock_qwen2_vl_processor_cannot_be_built_without_torchvision():
    tokenizer = train_tokenizer()
    with pytest.raises(AttributeError, match="VIDEO_PROCESSOR_MAPPING"):
        Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer)
    assert Qwen2VLProcessorImagesOnly(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer).tokenizer


def test_load_processor_passes_other_failures_on(tmp_path):
    with pytest.raises(ValueError, match="Unrecognized processing class"):  # AutoProcessor's own error
        load_processor(tmp_path)


def test_load_model_loads_a_video_family_folder(saved):
    model, processor = load_model(saved["smolvlm"], attn_implementation="eager")
    assert model.config.model_type == "smolvlm" and not model.training
    assert type(processor).__name__ == "SmolVLMProcessorImagesOnly"


def test_unknown_family_is_one_clear_error():
    model, _ = build_tiny_model("llava")
    with pytest.raises(ModarbError, match=r"no family record for 'llava2'; choose one of llava, llava_next, "):
        build_tiny_processor("llava2", model)


def test_smoke_model_args_give_image_string_only_where_the_image_text_differs():
    assert model_args("llava") == "pretrained=tiny-llava"
    assert model_args("qwen2_vl") == "pretrained=tiny-qwen2_vl,image_string=<|vision_start|><|image_pad|><|vision_end|>"
    assert model_args("gemma3") == "pretrained=tiny-gemma3,image_string=<start_of_image>"


@pytest.mark.slow
def test_smoke_entry_end_to_end(tmp_path):
    """One family through `modarb eval` and `modarb leaderboard add` (two real processes) into a fresh entries folder."""
    entries = tmp_path / "entries"
    [run] = make_smoke_entries(tmp_path / "out", ["llava"], limit=1, entries_dir=entries)
    assert run.ok, run.error
    [path] = run.added
    entry = json.loads(Path(path).read_text())
    assert (entry["kind"], entry["model"], entry["model_args"]) == ("smoke", "tiny-llava", {"pretrained": "tiny-llava"})
    assert {task: spec["n"] for task, spec in entry["tasks"].items()} == {"mf_follow_image": 1, "mf_follow_text": 1}
    with pytest.raises(ValueError, match="unknown family 'llava2'"):
        make_smoke_entries(tmp_path / "out", ["llava2"])
