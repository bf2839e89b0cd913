"""Load the real MC² benchmark (arXiv 2505.20977) and the Instruction Anchor paper's subsets.

Two JSON formats, both a list of items, told apart by their fields:

- `evaluate_final.json`, the 2,000-item benchmark: image_id, task, question, answer_vision,
  answer_text, context.
- `v3_following_{text|vision}_open_ended_<model>_remaining.json`, the paper's per-model subsets:
  image_id, task, context, answer_img, answer_text, answer_{img|text}_candidate_list (kept as
  the candidates; may be empty) and the ready prompts question1/2/3; the question is the middle
  line of question3 ("<instruction>\\n<question>\\n<constraint>").

Images are COCO-2014 files named by image_id, `COCO_val2014_<id>.jpg` or `<id>.jpg`, in a
folder the user gives. Items keep the image *path* (decoded lazily by the dataset builder), so
loading 2,000 items reads no image.

MC² has no splits, so modarb makes two halves that never meet (`halves`): within each MC² task
type, items are ordered by the SHA-256 of "<task>|<image_id>|<question>" and the first half
(rounded down) is the *analysis* half (identify, flow, choosing alpha), the rest the *test* half
(every lm-eval score; the mc2 tasks' default, `--metadata '{"mc2_half": "analysis"|"test"|"all"}'`).
Each half lists one item of each task type in turn, so its first n items (lm-eval's --limit,
`mc2_n`, the analyses' item counts) cover every task type.
The split reads nothing but the items' own text: the same file gives the same halves on every
run and machine, and every task type is split evenly.

Where the paths come from, first found wins:
- mc2_json: lm-eval `--metadata '{"mc2_json": "/data/mc2/evaluate_final.json"}'`, else the
  environment variable MODARB_MC2_JSON. Either the benchmark file (the paper's subset files are
  then read from the same folder) or the folder holding the MC² JSON files.
- mc2_images: `--metadata '{"mc2_images": "/data/coco/val2014"}'`, else MODARB_MC2_IMAGES.
  Needed by every task with an image (not by the language control).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from modarb_tasks.errors import ModarbError
from modarb_tasks.docs import ConflictItem
from modarb_tasks.prompts import CONSTRAINT, INSTRUCTIONS

MC2_JSON_ENV = "MODARB_MC2_JSON"
MC2_IMAGES_ENV = "MODARB_MC2_IMAGES"
BENCHMARK_FILE = "evaluate_final.json"
# The paper's subsets: task-name suffix -> file name (the side it follows is in the name).
PAPER_SUBSETS = {
    "follow_text_qwen2_5_vl_7b": "v3_following_text_open_ended_qwen_vl_2_5_7b_remaining.json",
    "follow_image_qwen2_5_vl_7b": "v3_following_vision_open_ended_qwen_vl_2_5_7b_remaining.json",
    "follow_image_internvl3_8b": "v3_following_vision_open_ended_internvl_3_8b_remaining.json",
    "follow_image_llava_v1_5_7b": "v3_following_vision_open_ended_llava-v1.5-7b_remaining.json",
}
HALVES = ("analysis", "test")
ALL = "all"  # both halves: only for looking at the data, never for choosing and scoring together
_BENCHMARK_FIELDS = ("image_id", "task", "question", "answer_vision", "answer_text", "context")
_SUBSET_FIELDS = ("image_id", "task", "context", "answer_img", "answer_text", "question3")
_CANDIDATE_FIELDS = ("answer_img_candidate_list", "answer_text_candidate_list")


class MC2DataError(ModarbError):
    """MC² files or images missing or malformed (one line: what, where, how to fix)."""


def image_file_names(image_id: str) -> tuple[str, str]:
    """The two accepted file names of a COCO image: `COCO_val2014_<id>.jpg`, `<id>.jpg`."""
    return f"COCO_val2014_{image_id}.jpg", f"{image_id}.jpg"


# How the user gives each path: lm-eval's --metadata keys (tasks) or modarb's flags (analyses).
HOW = {
    "metadata": {
        "json": ("pass --metadata '{\"mc2_json\": \"/path/to/evaluate_final.json\"}'", "set mc2_json or"),
        "images": ("pass --metadata '{\"mc2_images\": \"/path/to/coco/val2014\"}'", "set mc2_images or"),
    },
    "flags": {
        "json": ("pass --mc2-json /path/to/evaluate_final.json", "pass --mc2-json or set"),
        "images": ("pass --mc2-images /path/to/coco/val2014", "pass --mc2-images or set"),
    },
}


def resolve_json(mc2_json: str | None, file_name: str | None = None, via: str = "metadata") -> Path:
    """The JSON file to read: the benchmark (file_name None) or a paper subset file by name;
    `via` ("metadata" or "flags") words the error's fix."""
    given = mc2_json or os.environ.get(MC2_JSON_ENV)
    if not given:
        raise MC2DataError(
            f"MC² JSON not set: {HOW[via]['json'][0]} or set {MC2_JSON_ENV}"
        )
    path = Path(given).expanduser()
    if not path.exists():
        raise MC2DataError(f"MC² JSON not found: {path} ({HOW[via]['json'][1]} {MC2_JSON_ENV} to the file or its folder)")
    folder = path if path.is_dir() else path.parent
    if file_name is None:
        path = folder / BENCHMARK_FILE if path.is_dir() else path
    else:
        path = folder / file_name
    if not path.is_file():
        raise MC2DataError(f"MC² JSON not found: {path} (put {path.name} in {folder})")
    return path


def resolve_images(mc2_images: str | None, via: str = "metadata") -> Path:
    """The COCO image folder given by metadata (or flag) or environment; it must exist."""
    given = mc2_images or os.environ.get(MC2_IMAGES_ENV)
    if not given:
        raise MC2DataError(
            f"MC² image folder not set: {HOW[via]['images'][0]} or set {MC2_IMAGES_ENV}"
        )
    folder = Path(given).expanduser()
    if not folder.is_dir():
        raise MC2DataError(
            f"MC² image folder not found: {folder} ({HOW[via]['images'][1]} {MC2_IMAGES_ENV} to your COCO folder)"
        )
    return folder


def load_items(
    json_file: Path, image_dir: Path | None = None, n: int | None = None, half: str = ALL, via: str = "metadata"
) -> list[ConflictItem]:
    """The first `n` (all if None) items of one half (round-robin over task types) or of the whole
    file (file order), with image paths if `image_dir` (only the chosen items need an image)."""
    records = _read_list(json_file)
    items = [_item(json_file, i, record) for i, record in enumerate(records)]
    split = halves(items)  # labels every item's `split` with its half
    items = (items if check_half(half) == ALL else split[half])[:n]
    if image_dir is not None:
        _attach_images(items, image_dir, via)
    return items


def check_half(half: str) -> str:
    if half not in (*HALVES, ALL):
        raise MC2DataError(f"unknown MC² half {half!r}; choose analysis, test or all")
    return half


def split_key(item: ConflictItem) -> str:
    """What decides an item's half: its task type, image id and question (never its position)."""
    return hashlib.sha256(f"{item.question_type}|{item.scene_id}|{item.question}".encode()).hexdigest()


def halves(items: Sequence[ConflictItem]) -> dict[str, list[ConflictItem]]:
    """{"analysis": [...], "test": [...]}: per task type, the items ordered by split_key, first half
    (rounded down) to analysis; each half in round-robin order of task types (see _round_robin);
    each item's `split` names its half."""
    by_task: dict[str, list[ConflictItem]] = defaultdict(list)
    for item in items:
        by_task[item.question_type].append(item)
    analysis: set[int] = set()
    for group in by_task.values():
        ordered = sorted(group, key=lambda item: (split_key(item), item.item_id))
        analysis.update(id(item) for item in ordered[: len(ordered) // 2])
    result: dict[str, list[ConflictItem]] = {name: [] for name in HALVES}
    for item in items:
        item.split = "analysis" if id(item) in analysis else "test"
        result[item.split].append(item)
    return {name: _round_robin(half) for name, half in result.items()}


def _round_robin(items: list[ConflictItem]) -> list[ConflictItem]:
    """One item of each task type in turn (types in order of first appearance, items in file
    order), so that the first n items of a half cover every task type."""
    by_task: dict[str, list[ConflictItem]] = defaultdict(list)
    for item in items:
        by_task[item.question_type].append(item)
    queues = list(by_task.values())
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


def _read_list(path: Path) -> list:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MC2DataError(f"malformed MC² JSON {path}: {err.msg} at line {err.lineno} column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise MC2DataError(f"malformed MC² JSON {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(records, list):
        raise MC2DataError(f"malformed MC² JSON {path}: expected a list of items, found {_json_kind(records)}")
    return records


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _item(path: Path, index: int, record: object) -> ConflictItem:
    def bad(what: str) -> MC2DataError:
        return MC2DataError(f"malformed MC² JSON {path}: item {index} {what}")

    if not isinstance(record, dict):
        raise bad(f"is {_json_kind(record)}, not an object")
    is_subset = "question3" in record
    fields = _SUBSET_FIELDS if is_subset else _BENCHMARK_FIELDS
    missing = [f for f in fields if f not in record]
    if missing:
        raise bad(f"lacks field(s) {', '.join(missing)}")
    wrong = [f for f in fields if not isinstance(record[f], str)]
    if wrong:
        raise bad(f"field {wrong[0]} is not a string")
    candidates = {f: record.get(f, []) for f in _CANDIDATE_FIELDS}
    for name, values in candidates.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise bad(f"field {name} is not a list of strings")
    if is_subset:
        lines = record["question3"].split("\n")
        if len(lines) != 3 or lines[0] not in INSTRUCTIONS.values() or lines[2] != CONSTRAINT:
            raise bad("question3 is not '<modality instruction>\\n<question>\\n<format constraint>'")
        question, answer_image = lines[1], record["answer_img"]
    else:
        question, answer_image = record["question"], record["answer_vision"]
    return ConflictItem(
        item_id=f"mc2-{path.stem}-{index:04d}",
        source="mc2",
        split="test",
        question_type=record["task"],
        scene_id=record["image_id"],
        context=record["context"],
        question=question,
        answer_image=answer_image,
        answer_text=record["answer_text"],
        candidates_image=candidates["answer_img_candidate_list"],
        candidates_text=candidates["answer_text_candidate_list"],
    )


def _attach_images(items: list[ConflictItem], image_dir: Path, via: str) -> None:
    """Set each item's image to its file's path; the first id without a file is an error."""
    present = set(os.listdir(image_dir))
    for item in items:
        found = [name for name in image_file_names(item.scene_id) if name in present]
        if not found:
            names = " or ".join(image_file_names(item.scene_id))
            raise MC2DataError(
                f"MC² image {item.scene_id} not in {image_dir} (expected {names}; "
                f"{HOW[via]['images'][1]} {MC2_IMAGES_ENV} to the folder holding all COCO images)"
            )
        item.image = str(image_dir / found[0])
        _check_readable(image_dir / found[0], via)


def _check_readable(path: Path, via: str) -> None:
    """One line for an image file that is empty or not an image (a failed copy), before any batch runs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        size = path.stat().st_size if path.exists() else 0
        raise MC2DataError(f"MC² image {path} cannot be read ({size} bytes: {str(error).splitlines()[0][:120]}); "
                           f"copy the COCO image again, or {HOW[via]['images'][1]} {MC2_IMAGES_ENV} to an intact "
                           "COCO folder") from None


def corpus(folder: Path) -> list[str]:
    """Every text of the MC² JSON files in `folder` and of the prompt layout: what a tokenizer for a
    tiny test model is trained on, so that MC² prompts and answers tokenize as with a real one."""
    from modarb_tasks.prompts import CONTEXT_PREFIX, LONG_SYSTEM_PROMPT

    texts = [*INSTRUCTIONS.values(), CONSTRAINT, CONTEXT_PREFIX, LONG_SYSTEM_PROMPT, "USER: ASSISTANT: SYSTEM:"]
    for path in sorted(Path(folder).glob("*.json")):
        for record in _read_list(path):
            texts += [value for value in record.values() if isinstance(value, str)]
            texts += [value for f in _CANDIDATE_FIELDS for value in record.get(f, [])]
    return texts
