"""The MC² loader on the real JSON files (mc2_dir), with stand-in images rendered under the real COCO ids."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from modarb_tasks.errors import ModarbError
from modarb_tasks import mc2
from modarb_tasks.datasets import mc2_dataset
from modarb_tasks.docs import to_doc


@pytest.fixture(autouse=True)
def _no_mc2_environment(monkeypatch):
    monkeypatch.delenv(mc2.MC2_JSON_ENV, raising=False)
    monkeypatch.delenv(mc2.MC2_IMAGES_ENV, raising=False)


@pytest.fixture
def benchmark(mc2_dir) -> Path:
    return mc2_dir / mc2.BENCHMARK_FILE


def write_stand_in_images(folder: Path, image_ids: list[str]) -> None:
    """One small JPEG per id, alternating the two COCO naming schemes; size encodes the position."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(image_ids):
        name = mc2.image_file_names(image_id)[i % 2]
        Image.new("RGB", (20 + i, 10), (i * 40 % 256, 0, 0)).save(folder / name)


def _first_ids(json_file: Path, n: int, half: str = "test") -> list[str]:
    """Image ids of the first `n` items of a half (the mc2 tasks score the test half by default)."""
    return [item.scene_id for item in mc2.load_items(json_file, n=n, half=half)]


def test_benchmark_loads_all_2000_items(mc2_dir):
    items = mc2.load_items(mc2.resolve_json(str(mc2_dir)))
    assert len(items) == 2000
    assert {i.question_type for i in items} == {
        "activity_recognition", "attribute", "color", "counting", "object_recognition",
        "positional_reasoning", "sentiment_understanding", "sport_recognition"}
    first = items[0]
    assert (first.scene_id, first.question, first.answer_image, first.answer_text) == (
        "000000046962", "What are the sheep doing?", "eating", "playing in a field")
    assert first.image is None and first.candidates_image == []
    assert len({i.item_id for i in items}) == 2000


@pytest.mark.parametrize(
    ("subset", "count"),
    [("follow_text_qwen2_5_vl_7b", 842), ("follow_image_qwen2_5_vl_7b", 842),
     ("follow_image_internvl3_8b", 842), ("follow_image_llava_v1_5_7b", 896)],
)
def test_paper_subsets_load_with_their_counts(subset, count, benchmark):
    items = mc2.load_items(mc2.resolve_json(str(benchmark), mc2.PAPER_SUBSETS[subset]))
    assert len(items) == count
    assert all(i.question and "\n" not in i.question for i in items)


def test_subset_items_keep_question_and_candidate_lists(mc2_dir):
    item = mc2.load_items(mc2.resolve_json(str(mc2_dir), mc2.PAPER_SUBSETS["follow_text_qwen2_5_vl_7b"]), n=1)[0]
    assert item.question == "What are the giraffes doing?"
    assert (item.answer_image, item.answer_text) == ("standing", "walking")
    assert item.candidates_image == ["stand", "站立", "站着"]
    assert item.candidates_text[:2] == ["walk", "行走"]
    doc = to_doc(item, "follow_text")
    assert doc["prompt"].endswith(
        "you must rely on the text context rather than the input image content.\n"
        "What are the giraffes doing?\nAnswer the question using a single word or phrase.")


def test_docs_load_with_stand_in_images(tmp_path, benchmark):
    ids = _first_ids(benchmark, 3)
    write_stand_in_images(tmp_path / "coco", ids)
    data = mc2_dataset("follow_image", mc2_json=str(benchmark), mc2_images=str(tmp_path / "coco"), n=3)
    docs = data["test"]
    assert len(docs) == 3
    assert [doc["image"].size for doc in docs] == [(20, 10), (21, 10), (22, 10)]
    assert [doc["scene_id"] for doc in docs] == ids
    items = mc2.load_items(benchmark, n=3, half="test")
    assert [doc["prompt"] for doc in docs] == [to_doc(i, "follow_image")["prompt"] for i in items]
    assert docs[0]["target"] == items[0].answer_image and docs[0]["split"] == "test"


def test_environment_variables_are_used_and_metadata_wins(tmp_path, monkeypatch, mc2_dir, benchmark):
    ids = _first_ids(benchmark, 2)
    write_stand_in_images(tmp_path / "coco", ids)
    monkeypatch.setenv(mc2.MC2_JSON_ENV, str(mc2_dir))
    monkeypatch.setenv(mc2.MC2_IMAGES_ENV, str(tmp_path / "coco"))
    assert len(mc2_dataset("visual_control", n=2)["test"]) == 2
    monkeypatch.setenv(mc2.MC2_IMAGES_ENV, str(tmp_path / "nowhere"))
    assert len(mc2_dataset("visual_control", mc2_images=str(tmp_path / "coco"), n=2)["test"]) == 2


def test_language_control_needs_no_images(benchmark):
    docs = mc2_dataset("language_control", mc2_json=str(benchmark), n=2)["test"]
    assert docs[0]["image"] is None and "<image>" not in docs[0]["prompt"]


def _error(call) -> str:
    with pytest.raises(mc2.MC2DataError) as info:
        call()
    assert isinstance(info.value, ModarbError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_error_image_folder_not_set(benchmark):
    assert _error(lambda: mc2_dataset("follow_image", mc2_json=str(benchmark))) == (
        "MC² image folder not set: pass --metadata '{\"mc2_images\": \"/path/to/coco/val2014\"}' "
        "or set MODARB_MC2_IMAGES")


def test_error_image_folder_not_found(tmp_path, benchmark):
    missing = tmp_path / "coco"
    assert _error(lambda: mc2_dataset("follow_text", mc2_json=str(benchmark), mc2_images=str(missing))) == (
        f"MC² image folder not found: {missing} (set mc2_images or MODARB_MC2_IMAGES to your COCO folder)")


def test_error_names_folder_and_first_missing_image(tmp_path, benchmark):
    ids = _first_ids(benchmark, 4)
    write_stand_in_images(tmp_path, [ids[0], ids[1], ids[3]])
    assert _error(lambda: mc2_dataset("follow_image", mc2_json=str(benchmark), mc2_images=str(tmp_path), n=4)) == (
        f"MC² image {ids[2]} not in {tmp_path} (expected COCO_val2014_{ids[2]}.jpg or {ids[2]}.jpg; "
        "set mc2_images or MODARB_MC2_IMAGES to the folder holding all COCO images)")


@pytest.mark.parametrize("content", [b"", b"not a jpeg at all"], ids=["zero-byte", "not-an-image"])
def test_error_names_the_first_unreadable_image(tmp_path, benchmark, content):
    ids = _first_ids(benchmark, 3)
    write_stand_in_images(tmp_path, ids)
    broken = tmp_path / mc2.image_file_names(ids[1])[1]
    broken.write_bytes(content)
    message = _error(lambda: mc2_dataset("follow_image", mc2_json=str(benchmark), mc2_images=str(tmp_path), n=3))
    assert message.startswith(f"MC² image {broken} cannot be read ({len(content)} bytes: ")
    assert message.endswith("copy the COCO image again, or set mc2_images or MODARB_MC2_IMAGES to an intact COCO folder")


def test_error_json_not_set():
    assert _error(lambda: mc2_dataset("language_control")) == (
        "MC² JSON not set: pass --metadata '{\"mc2_json\": \"/path/to/evaluate_final.json\"}' or set MODARB_MC2_JSON")


def test_error_json_not_found(tmp_path):
    assert _error(lambda: mc2.resolve_json(str(tmp_path / "x.json"))) == (
        f"MC² JSON not found: {tmp_path / 'x.json'} (set mc2_json or MODARB_MC2_JSON to the file or its folder)")
    (tmp_path / "evaluate_final.json").write_text("[]")
    assert _error(lambda: mc2.resolve_json(str(tmp_path), mc2.PAPER_SUBSETS["follow_image_internvl3_8b"])) == (
        f"MC² JSON not found: {tmp_path / mc2.PAPER_SUBSETS['follow_image_internvl3_8b']} "
        f"(put {mc2.PAPER_SUBSETS['follow_image_internvl3_8b']} in {tmp_path})")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('[{"image_id": "1",', "Expecting property name enclosed in double quotes at line 1 column 19"),
        ('{"image_id": "1"}', "expected a list of items, found an object"),
        ("[3]", "item 0 is a number, not an object"),
        ('[{"image_id": "1", "task": "color", "question": "q", "answer_vision": "red", "context": "c"}]',
         "item 0 lacks field(s) answer_text"),
        ('[{"image_id": 1, "task": "color", "question": "q", "answer_vision": "red", "answer_text": "b",'
         ' "context": "c"}]',
         "item 0 field image_id is not a string"),
        ('[{"image_id": "1", "task": "t", "context": "c", "answer_img": "a", "answer_text": "b", "question3": "q",'
         ' "answer_img_candidate_list": "a"}]',
         "item 0 field answer_img_candidate_list is not a list of strings"),
        ('[{"image_id": "1", "task": "t", "context": "c", "answer_img": "a", "answer_text": "b", "question3": "q"}]',
         "item 0 question3 is not '<modality instruction>\\n<question>\\n<format constraint>'"),
    ],
)
def test_error_malformed_json(tmp_path, content, problem):
    path = tmp_path / "evaluate_final.json"
    path.write_text(content)
    assert _error(lambda: mc2.load_items(mc2.resolve_json(str(path)))) == f"malformed MC² JSON {path}: {problem}"


# --- the analysis and test halves -------------------------------------------------------------
@pytest.mark.parametrize("file_name", [mc2.BENCHMARK_FILE, *mc2.PAPER_SUBSETS.values()])
def test_halves_are_disjoint_cover_every_item_and_split_each_task_type_evenly(file_name, mc2_dir):
    items = mc2.load_items(mc2_dir / file_name)
    halves = mc2.halves(items)
    ids = {name: {item.item_id for item in half} for name, half in halves.items()}
    assert not ids["analysis"] & ids["test"]
    assert ids["analysis"] | ids["test"] == {item.item_id for item in items}
    for task in {item.question_type for item in items}:
        counts = {name: sum(item.question_type == task for item in half) for name, half in halves.items()}
        assert counts["test"] - counts["analysis"] in (0, 1)  # half of each task type, rounded down, analyses
    assert all(item.split == name for name, half in halves.items() for item in half)
    types = len({item.question_type for item in items})
    for half in halves.values():  # the first items of a half take one of each task type in turn
        assert len({item.question_type for item in half[:types]}) == types


# sha256 of the sorted item ids of the benchmark's analysis half, when the split was made
# (2026-12-01): any change to the split rule or to evaluate_final.json shows here.
BENCHMARK_ANALYSIS_DIGEST = "f87c135b0344a6d7e820e5adc112a12038e8479ce4d267e5f3be78a2b4468656"


def test_halves_are_stable_across_runs_and_machines(benchmark):
    """The half of an item is a function of its text alone (SHA-256, not Python's salted hash, not
    the file order): shuffling the file moves no item, another process with another hash seed
    lists the same half, and the benchmark's analysis half is the one recorded above."""
    items = mc2.load_items(benchmark)
    first = {item.item_id: item.split for item in items}
    shuffled = list(reversed(items))
    assert {item.item_id: item.split for half in mc2.halves(shuffled).values() for item in half} == first
    probe = items[0]
    digest = hashlib.sha256(f"{probe.question_type}|{probe.scene_id}|{probe.question}".encode()).hexdigest()
    assert mc2.split_key(probe) == digest
    script = ("from modarb_tasks import mc2; import sys; items = mc2.load_items(mc2.Path(sys.argv[1]), half='test');"
              "print(','.join(i.item_id for i in items))")
    other = subprocess.run([sys.executable, "-c", script, str(benchmark)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert other.stdout.strip().split(",") == [item.item_id for item in mc2.load_items(benchmark, half="test")]
    analysis = sorted(i for i, half in first.items() if half == "analysis")
    assert len(analysis) == 1000
    assert hashlib.sha256(",".join(analysis).encode()).hexdigest() == BENCHMARK_ANALYSIS_DIGEST


def test_mc2_tasks_score_the_test_half_unless_told(tmp_path, benchmark):
    data = {half: mc2_dataset("language_control", mc2_json=str(benchmark), half=half)["test"]
            for half in ("test", "analysis", "all")}
    assert len(data["test"]) + len(data["analysis"]) == len(data["all"]) == 2000
    assert set(data["test"]["split"]) == {"test"} and set(data["analysis"]["split"]) == {"analysis"}
    from modarb_tasks.tasks import utils

    assert utils.mc2("language_control", mc2_json=str(benchmark))["test"]["item_id"] == data["test"]["item_id"]
    assert utils.mc2("language_control", mc2_json=str(benchmark), mc2_half="analysis")["test"]["item_id"] == (
        data["analysis"]["item_id"])
    assert "choose analysis, test or all" in _error(lambda: mc2_dataset("language_control", mc2_json=str(benchmark),
                                                                         half="train"))
