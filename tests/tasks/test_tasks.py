"""The task pack seen through lm-eval: names, groups, docs, metric wiring, and a real evaluation."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.tasks import TaskManager
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from modarb_tasks import TASKS_PATH, mc2
from modarb_tasks.prompts import CONSTRAINT, INSTRUCTION_WORDINGS, INSTRUCTIONS, LONG_SYSTEM_PROMPT, TRAINED_WORDINGS
from modarb_tasks.shapes import vocabulary

SHAPES_N = 4
E2E_LIMIT = 10
GROUPS = {
    "modality_following": ["mf_follow_image", "mf_follow_text"],
    "modality_controls": ["mf_visual_control", "mf_language_control"],
    "modality_following_ll": ["mf_follow_image_ll", "mf_follow_text_ll"],
    "modality_following_positional": [
        "mf_follow_image_instruction_after", "mf_follow_text_instruction_after",
        "mf_follow_image_system_prompt", "mf_follow_text_system_prompt"],
    "modality_following_paraphrase": ["mf_follow_image_paraphrase", "mf_follow_text_paraphrase"],
    "modality_following_mc2": ["mc2_follow_image", "mc2_follow_text"],
    "modality_controls_mc2": ["mc2_visual_control", "mc2_language_control"],
    "modality_following_mc2_paper": [f"mc2_paper_{name}" for name in mc2.PAPER_SUBSETS],
}


def _manager(**metadata) -> TaskManager:
    return TaskManager(include_path=TASKS_PATH, include_defaults=False, metadata={"shapes_n": SHAPES_N, **metadata})


def _tasks(names: list[str], **metadata) -> dict:
    return _manager(**metadata).load(names)["tasks"]


def test_task_manager_lists_every_task_and_group():
    listed = set(_manager().all_tasks)
    expected = {"modarb", *GROUPS, *(task for tasks in GROUPS.values() for task in tasks)}
    assert expected <= listed
    assert not {name for name in listed if name.startswith("_")}


def test_modarb_group_builds_both_groups_with_prompt_and_image():
    tasks = _tasks(["modarb"])
    assert sorted(tasks) == sorted(GROUPS["modality_following"] + GROUPS["modality_controls"])
    for name, task in tasks.items():
        docs = list(task.test_docs())
        assert len(docs) == SHAPES_N
        for doc in docs:
            assert task.doc_to_text(doc) == doc["prompt"]
            assert task.doc_to_target(doc) == doc["target"]
            images = task.doc_to_image(doc)
            if name == "mf_language_control":
                assert images is None and "<image>" not in doc["prompt"]
            else:
                assert len(images) == 1 and isinstance(images[0], Image.Image)
                assert doc["prompt"].startswith("<image>\n")
        assert task.config.generation_kwargs["until"] == ["\n"]
        assert task.config.generation_kwargs["max_gen_toks"] == 8
    # both follow tasks are views of the same items, with the instructed side's answer as target
    image_docs, text_docs = (list(tasks[n].test_docs()) for n in GROUPS["modality_following"])
    assert [d["item_id"] for d in image_docs] == [d["item_id"] for d in text_docs]
    assert [d["target"] for d in image_docs] == [d["answer_image"] for d in image_docs]
    assert [d["target"] for d in text_docs] == [d["answer_text"] for d in text_docs]


def test_positional_variants_move_the_instruction_or_add_a_system_prompt():
    tasks = _tasks(["modality_following_positional"])
    after = tasks["mf_follow_text_instruction_after"].test_docs()[0]
    assert after["prompt"].endswith(CONSTRAINT + "\n" + INSTRUCTIONS["text"])
    system = tasks["mf_follow_image_system_prompt"].test_docs()[0]
    assert system["prompt"].startswith(LONG_SYSTEM_PROMPT + "\n<image>\n")
    start, end = system["spans"]["instruction"]
    assert system["prompt"][start:end] == INSTRUCTIONS["image"]


def test_paraphrase_tasks_word_the_instruction_as_no_training_wording_does():
    tasks = _tasks(["modality_following_paraphrase", "modality_following"])
    for side in ("image", "text"):
        held_out = tasks[f"mf_follow_{side}_paraphrase"].test_docs()
        paper = tasks[f"mf_follow_{side}"].test_docs()
        for doc, same_item in zip(held_out, paper, strict=True):
            start, end = doc["spans"]["instruction"]
            assert doc["prompt"][start:end] == INSTRUCTION_WORDINGS["held_out"][side] and doc["wording"] == "held_out"
            assert doc["prompt"].replace(doc["prompt"][start:end], INSTRUCTIONS[side]) == same_item["prompt"]
            assert doc["target"] == same_item["target"]  # the same item, only the instruction's wording differs
    trained = {INSTRUCTION_WORDINGS[name][side] for name in TRAINED_WORDINGS for side in ("image", "text")}
    assert not set(INSTRUCTION_WORDINGS["held_out"].values()) & trained
    assert len(trained) == 2 * len(TRAINED_WORDINGS)  # every trained wording says each side differently


def test_yaml_wires_process_results_and_aggregations():
    task = _tasks(["mf_follow_image"])["mf_follow_image"]
    doc = task.test_docs()[0]
    answers = [doc["answer_image"], doc["answer_text"], "nothing like it"]
    scores = [task.process_results(doc, [a]) for a in answers]
    assert [(s["follow"], s["compete"], s["other"]) for s in scores] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    aggregate = task.aggregation()
    assert aggregate["mf_ratio"]([s["mf_ratio"] for s in scores]) == pytest.approx(1 / 3)
    assert aggregate["mf_conditional"]([s["mf_conditional"] for s in scores]) == 0.5
    assert task.higher_is_better() == {
        "follow": True, "compete": False, "other": False, "mf_ratio": True, "mf_conditional": True}


def test_loglikelihood_variant_requests_both_answers_with_their_leading_space():
    task = _tasks(["mf_follow_text_ll"])["mf_follow_text_ll"]
    doc = task.test_docs()[0]
    requests = task.construct_requests(doc, doc["prompt"])
    assert [r.args[1] for r in requests] == [" " + doc["answer_text"], " " + doc["answer_image"]]
    assert all(r.request_type == "loglikelihood" and r.args[0] == doc["prompt"] for r in requests)
    assert task.process_results(doc, [(-1.0, True), (-2.0, False)])["follow"] == 1


def test_mc2_groups_build_from_metadata(tmp_path, mc2_dir):
    for json_name in (mc2.BENCHMARK_FILE, *mc2.PAPER_SUBSETS.values()):
        for record in mc2.load_items(mc2_dir / json_name, n=2, half="test"):  # the tasks score the test half
            Image.new("RGB", (12, 12)).save(tmp_path / f"{record.scene_id}.jpg")
    metadata = {"mc2_json": str(mc2_dir / mc2.BENCHMARK_FILE), "mc2_images": str(tmp_path), "mc2_n": 2}
    names = ["modality_following_mc2", "modality_controls_mc2", "modality_following_mc2_paper"]
    tasks = _tasks(names, **metadata)
    assert sorted(tasks) == sorted(t for g in names for t in GROUPS[g])
    for name, task in tasks.items():
        doc = task.test_docs()[0]
        assert task.doc_to_text(doc) == doc["prompt"]
        if name != "mc2_language_control":
            assert isinstance(task.doc_to_image(doc)[0], Image.Image)
    first_test_item = mc2.load_items(mc2_dir / mc2.PAPER_SUBSETS["follow_text_qwen2_5_vl_7b"], n=1, half="test")[0]
    assert tasks["mc2_paper_follow_text_qwen2_5_vl_7b"].test_docs()[0]["question"] == first_test_item.question
    assert {doc["split"] for task in tasks.values() for doc in task.test_docs()} == {"test"}


# ---- end to end: stock hf-multimodal on a tiny LLaVA that always answers the same word ----


def _constant_llava(folder: Path, word: str) -> Path:
    """A random-init LLaVA (word-level tokenizer trained here) whose greedy answer is always `word`.

    The last MLP's bias writes a huge vector e0 into the residual stream and the LM head reads
    e0 only into `word`'s logit, so every generated token is `word`: the metrics then have a
    known answer for every doc.
    """
    special = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(vocabulary(), trainers.WordLevelTrainer(special_tokens=special))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"})
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                mlp_bias=True, tie_word_embeddings=False, pad_token_id=fast.pad_token_id,
                                bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id),
        image_token_index=fast.convert_tokens_to_ids("<image>"), image_seq_length=4)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    word_id = fast.convert_tokens_to_ids(word)
    assert word_id != fast.unk_token_id
    with torch.no_grad():
        last_mlp = model.model.language_model.layers[-1].mlp
        last_mlp.down_proj.weight.zero_()
        last_mlp.down_proj.bias.zero_()
        last_mlp.down_proj.bias[0] = 1000.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[word_id, 0] = 1.0
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=fast, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _expected(docs: list[dict], word: str) -> dict:
    """The metrics if every answer is `word`, from exact candidate membership (not the matcher)."""
    follow = [word in d["candidates_follow"] for d in docs]
    compete = [word in d["candidates_compete"] for d in docs]
    n = len(docs)
    named = sum(follow) + sum(compete)
    return {
        "follow": sum(follow) / n, "compete": sum(compete) / n, "other": 1 - named / n,
        "mf_ratio": sum(follow) / n, "mf_conditional": sum(follow) / named if named else math.nan,
    }


def _evaluate(model_dir: Path, tasks: list[str]) -> dict:
    return lm_eval.simple_evaluate(
        model="hf-multimodal", model_args={"pretrained": str(model_dir), "device": "cpu", "max_length": 512},
        tasks=tasks, limit=E2E_LIMIT, batch_size=4, task_manager=_manager(shapes_n=E2E_LIMIT), log_samples=True)


def _telling_word(docs: list[dict]) -> str:
    """An answer word that the two sides give unequally often (both sides if possible): with it as
    the only answer, follow != compete, so a swapped side or a wrong aggregate shows."""
    image = Counter(d["answer_image"] for d in docs)
    text = Counter(d["answer_text"] for d in docs)
    return max(sorted(image | text), key=lambda w: (image[w] != text[w], image[w] > 0 < text[w], image[w] + text[w]))


def test_simple_evaluate_with_stock_hf_multimodal(tmp_path):
    tasks = _tasks(["modarb"], shapes_n=E2E_LIMIT)
    docs = {name: list(task.test_docs()) for name, task in tasks.items()}
    word = _telling_word(docs["mf_follow_image"])
    expected = {name: _expected(ds, word) for name, ds in docs.items()}
    assert expected["mf_follow_image"]["follow"] != expected["mf_follow_image"]["compete"]
    model_dir = _constant_llava(tmp_path / "llava", word)

    # Image tasks in one run; the text-only language control in its own run (see its YAML).
    image_run = _evaluate(model_dir, ["modality_following", "mf_visual_control"])
    text_run = _evaluate(model_dir, ["mf_language_control"])

    for run in (image_run, text_run):
        generated = {s["resps"][0][0].split()[0] for samples in run["samples"].values() for s in samples}
        assert generated == {word}
    results = image_run["results"] | text_run["results"]
    for name in GROUPS["modality_following"]:
        for metric in ("follow", "compete", "other", "mf_ratio", "mf_conditional"):
            assert results[name][f"{metric},none"] == pytest.approx(expected[name][metric], nan_ok=True), (name, metric)
    for name in GROUPS["modality_controls"]:
        assert results[name]["acc,none"] == pytest.approx(expected[name]["mf_ratio"])
    follow_total = sum(expected[n]["mf_ratio"] for n in GROUPS["modality_following"]) / 2
    assert results["modality_following"]["mf_ratio,none"] == pytest.approx(follow_total)
