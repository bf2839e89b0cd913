"""Where the analyses' items come from: `--data shapes` (default), `mc2`, or `mc2_paper:<model>`.

- shapes: the synthetic generator; identify and flow read its validation split, lm-eval scores
  its test split (the mf_* tasks).
- mc2: the 2,000-item MC² benchmark; mc2_paper:<model> (qwen2_5_vl_7b, internvl3_8b,
  llava_v1_5_7b): the Instruction Anchor paper's subset for that model, with its candidate lists.
  identify and flow read the *analysis* half, lm-eval scores the *test* half (modarb_tasks.mc2).
  The MC² JSON and COCO folder come from --mc2-json / --mc2-images, else MODARB_MC2_JSON /
  MODARB_MC2_IMAGES; images stay file paths until a batch decodes them.

`resolve_data` checks everything the run will read (files, the images of every item it will use)
before any model is loaded; `analysis_docs` turns items into docs for the first-answer-token
analyses and drops, counting them, the items those cannot score (see `usable_docs`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modarb_tasks.errors import ModarbError
from modarb_tasks import mc2
from modarb_tasks.docs import TASK_KINDS, ConflictItem, to_doc

PAPER_MODELS = ("qwen2_5_vl_7b", "internvl3_8b", "llava_v1_5_7b")
SHAPES = "shapes"
MC2 = "mc2"
PAPER_PREFIX = "mc2_paper:"
SHAPES_SPLIT = "validation"  # the analyses read it; the test split is kept for scoring interventions with lm-eval
SHAPES_SEED = 0  # the `shapes` generator seed of the benchmark's own splits
FOLLOW_KINDS = TASK_KINDS[:2]  # follow_image, follow_text: the instruction names a side
CONTROL_KINDS = TASK_KINDS[2:]  # visual_control, language_control: one side alone, no conflict
DROP_NO_TOKEN = "no candidate has a first token under this tokenizer"
DROP_SHARED = "the followed and the competing candidates share a first token"
FELL_BACK = "kept, scored on the answer: no listed candidate of a side has a token"  # not a drop


@dataclass(frozen=True)
class TaskSet:
    """The lm-eval tasks that score one data source, with the metadata their data builders read."""

    follow_image: str
    follow_text: str
    visual_control: str
    language_control: str
    metadata: dict = field(default_factory=dict)

    @property
    def follow(self) -> tuple[str, str]:
        return self.follow_image, self.follow_text

    @property
    def controls(self) -> tuple[str, str]:
        return self.visual_control, self.language_control


SHAPES_TASKS = TaskSet("mf_follow_image", "mf_follow_text", "mf_visual_control", "mf_language_control")


@dataclass(frozen=True)
class DataSource:
    """One resolved `--data` choice: its name and, for MC², the files it reads."""

    name: str = SHAPES
    json_file: Path | None = None  # MC² file the analysis items come from
    image_dir: Path | None = None

    @property
    def is_mc2(self) -> bool:
        return self.name != SHAPES

    @property
    def paper_model(self) -> str | None:
        return self.name.removeprefix(PAPER_PREFIX) if self.name.startswith(PAPER_PREFIX) else None

    @property
    def analysis_half(self) -> str:
        return "analysis" if self.is_mc2 else SHAPES_SPLIT

    def items(self, n: int, half: str | None = None) -> list[ConflictItem]:
        """The first `n` items of the analysis half (or `half`), MC² images as file paths."""
        if not self.is_mc2:
            from modarb_tasks.shapes import make_items

            return make_items(half or SHAPES_SPLIT, n, seed=SHAPES_SEED)
        return mc2.load_items(self.json_file, self.image_dir, n, half or "analysis")

    def tasks(self) -> TaskSet:
        """The lm-eval tasks scoring this source's test half (MC² controls: the benchmark's test half)."""
        if not self.is_mc2:
            return SHAPES_TASKS
        metadata = {"mc2_json": str(self.json_file), "mc2_images": str(self.image_dir), "mc2_half": "test"}
        model = self.paper_model
        follow = (f"mc2_paper_follow_image_{model}", f"mc2_paper_follow_text_{model}") if model else (
            "mc2_follow_image", "mc2_follow_text")
        return TaskSet(*follow, "mc2_visual_control", "mc2_language_control", metadata)

    def describe(self) -> dict:
        """What the outputs record about the data."""
        described = {"data": self.name, "analysis_half": self.analysis_half, "test_half": "test"}
        if self.is_mc2:
            described |= {"mc2_json": str(self.json_file), "mc2_images": str(self.image_dir)}
        return described

    def cli_args(self) -> list[str]:
        """The flags that name this source again in a recorded command."""
        if not self.is_mc2:
            return []
        return ["--data", self.name, "--mc2-json", str(self.json_file), "--mc2-images", str(self.image_dir)]


def add_data_arguments(parser) -> None:
    """--data, --mc2-json, --mc2-images, the same on identify, flow and reproduce."""
    parser.add_argument("--data", default=SHAPES, metavar="SOURCE",
                        help="shapes (synthetic, default), mc2 (the 2,000-item MC² benchmark) or mc2_paper:<model> "
                        f"(the paper's subset for {', '.join(PAPER_MODELS)}); MC² analyses read its analysis half, "
                        "lm-eval scores its test half")
    parser.add_argument("--mc2-json", default=None,
                        help=f"MC² evaluate_final.json or the folder of the MC² JSON files (default: ${mc2.MC2_JSON_ENV})")
    parser.add_argument("--mc2-images", default=None,
                        help=f"folder of the COCO-2014 images MC² names (default: ${mc2.MC2_IMAGES_ENV})")


def resolve_data(name: str, mc2_json: str | None = None, mc2_images: str | None = None,
                 uses: Sequence[tuple[str, int]] = ()) -> DataSource:
    """The DataSource for `--data name`, every file checked: `uses` lists (half, n) the run reads,
    whose images must all exist. One-line ModarbError otherwise (nothing is loaded yet)."""
    if name == SHAPES:
        return DataSource()
    if name == MC2:
        file_name = None
    elif name.startswith(PAPER_PREFIX) and name.removeprefix(PAPER_PREFIX) in PAPER_MODELS:
        file_name = mc2.PAPER_SUBSETS[f"follow_image_{name.removeprefix(PAPER_PREFIX)}"]
    elif name.startswith(PAPER_PREFIX):
        raise ModarbError(f"unknown paper subset {name!r}; choose mc2_paper:" + " or mc2_paper:".join(PAPER_MODELS))
    else:
        raise ModarbError(f"unknown --data {name!r}; choose shapes, mc2 or mc2_paper:<model> "
                          f"({', '.join(PAPER_MODELS)})")
    source = DataSource(name, mc2.resolve_json(mc2_json, file_name, via="flags"),
                        mc2.resolve_images(mc2_images, via="flags"))
    for half, n in uses:
        mc2.load_items(source.json_file, source.image_dir, n, half, via="flags")
        if half == "test":  # reproduce's controls are the benchmark's test half
            benchmark = mc2.resolve_json(str(source.json_file), via="flags")
            mc2.load_items(benchmark, source.image_dir, n, half, via="flags")
    return source


def first_token_candidates(item: ConflictItem, image_side: bool) -> list[str]:
    """The paper's candidate list for a side where it has one (first-token strings, synonyms
    included), else the answer itself."""
    listed = item.candidates_image if image_side else item.candidates_text
    return list(listed) or [item.answer_image if image_side else item.answer_text]


def item_docs(items: Sequence[ConflictItem], kinds: Sequence[str], layouts: Sequence[str] = ("standard",)) -> list[dict]:
    """Docs of `items` for each layout and kind, with first-answer-token candidates (see above)."""
    docs = []
    for layout in layouts:
        for kind in kinds:
            for item in items:
                doc = to_doc(item, kind, layout)
                if item.source == "mc2":
                    follows_image = kind in ("follow_image", "visual_control")
                    doc["candidates_follow"] = first_token_candidates(item, follows_image)
                    doc["candidates_compete"] = first_token_candidates(item, not follows_image)
                    listed = {True: item.candidates_image, False: item.candidates_text}
                    answers = {True: item.answer_image, False: item.answer_text}
                    doc["answer_fallback"] = {side: answers[image_side] for side, image_side in
                                              (("candidates_follow", follows_image),
                                               ("candidates_compete", not follows_image)) if listed[image_side]}
                docs.append(doc)
    return docs


def shapes_docs(n_items: int, kinds: Sequence[str] = TASK_KINDS, layouts: Sequence[str] = ("standard",),
                split: str = SHAPES_SPLIT) -> list[dict]:
    """Docs of the first `n_items` items of a `shapes` split for each layout and kind (no model needed)."""
    if n_items < 1:
        raise ModarbError(f"--n-items {n_items} must be at least 1")
    return item_docs(DataSource().items(n_items, split), kinds, layouts)


def usable_docs(docs: Sequence[dict], tokenizer, text_of) -> tuple[list[dict], dict[str, int]]:
    """(docs the first-token analyses can score, {reason: docs dropped}).

    A side whose paper candidates have no known first token after the prompt (`text_of(doc)`:
    the text the processor gets) falls back to its answer (counted under FELL_BACK, a note, not
    a drop). A doc is dropped when a side still has no first token, or when both sides share one
    (the logit difference would cancel). ModarbError if every doc is dropped for lack of tokens.
    """
    from interventions.analysis.batches import first_token_ids

    kept, dropped = [], Counter()
    for doc in docs:
        text = text_of(doc)
        for side, answer in doc.get("answer_fallback", {}).items():
            if not first_token_ids(tokenizer, text, doc[side]):  # e.g. a list of Chinese synonyms only
                doc[side] = [answer]
                dropped[FELL_BACK] += 1
        follow = set(first_token_ids(tokenizer, text, doc["candidates_follow"]))
        compete = set(first_token_ids(tokenizer, text, doc["candidates_compete"]))
        if not follow or not compete:
            dropped[DROP_NO_TOKEN] += 1
        elif follow & compete:
            dropped[DROP_SHARED] += 1
        else:
            kept.append(doc)
    if docs and dropped.get(DROP_NO_TOKEN) == len(docs):
        raise ModarbError(
            f"no item's answer candidates have a first token under this model's tokenizer ({len(docs)} docs); "
            "use a model whose tokenizer covers the answers' language, or another --data"
        )
    return kept, dict(dropped)


def analysis_docs(source: DataSource, config, tokenizer, n_items: int, kinds: Sequence[str],
                  layouts: Sequence[str] = ("standard",), half: str | None = None) -> tuple[list[dict], dict[str, int]]:
    """(usable docs of the first `n_items` analysis items, {reason: docs dropped}) for one model;
    `half` picks another shapes split (MC² analyses always read the analysis half)."""
    from interventions.model.encoding import image_string, model_string

    image_text = image_string(config, tokenizer)
    docs = item_docs(source.items(n_items, None if source.is_mc2 else half), kinds, layouts)
    return usable_docs(docs, tokenizer, lambda doc: model_string(doc["prompt"], image_text))


def data_record(source: DataSource, dropped: dict[str, int], n_docs: int) -> dict:
    """What identify.json / flow.json / summary.json record about the data (and the flags that name it)."""
    return source.describe() | {"docs": n_docs, "dropped": dropped, "flags": "".join(f" {a}" for a in source.cli_args())}


def docs_line(source: DataSource, docs: Sequence[dict], dropped: dict[str, int]) -> str:
    """One line for the terminal: which data, how many docs, what was dropped and why."""
    drops = "; ".join(f"{count} {reason}" for reason, count in dropped.items())
    return f"data: {source.name} ({source.analysis_half}), {len(docs)} docs" + (f"; {drops}" if drops else "")
