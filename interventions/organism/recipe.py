"""The organism's training recipe: data mix, schedule and seed, deterministic on the CPU.

The mix is what gives the organism its modality preference, the way real MLLMs get one:
instruction-tuning data rarely asks a model to trust the text over the picture, so here
follow-text examples are a small minority of the conflict examples. The model learns to
read the instruction (it must, to answer the follow-text ones) but leans on the image
when the instruction's pull is weak, so follow-text fails on a fraction of items while
follow-image is reliable. Controls (image only, context only) teach it to see and read.

GENERATIONS holds each generation's whole recipe: 1 is the shipped sentence-token organism,
2 the one whose prompts have a real VLM's token structure (subword tokens, 16 image tokens,
several instruction wordings, chat-formatted scoring).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interventions.model.encoding import encode_docs_text
from interventions.organism.captions import CAPTION_KINDS, caption_doc
from interventions.organism.answers import accuracy, chat_prompt, generate_answers
from interventions.organism.model import Architecture, build_model, build_processor
from interventions.organism.tokenizer import EOS
from modarb_tasks.docs import TASK_KINDS, ConflictItem, to_doc
from modarb_tasks.files import write_json
from modarb_tasks.prompts import TRAINED_WORDINGS
from modarb_tasks.shapes import SPLIT_SIZES, make_items

DATA_SEED = 0  # the `shapes` generator seed of the benchmark's own splits
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Mix:
    """How often each task kind, prompt layout and chat formatting appears in training."""

    kinds: dict[str, float] = field(
        default_factory=lambda: {
            "caption_image": 0.05,
            "caption_text": 0.03,
            "follow_image": 0.365,
            "follow_text": 0.015,
            "visual_control": 0.32,
            "language_control": 0.22,
        }
    )
    # The first `alignment_fraction` of steps draws from these kinds only: learn to see and read
    # before learning to arbitrate (LLaVA's alignment stage before its instruction tuning).
    alignment_kinds: dict[str, float] = field(
        default_factory=lambda: {
            "caption_image": 0.2,
            "caption_text": 0.1,
            "visual_control": 0.4,
            "language_control": 0.3,
        }
    )
    alignment_fraction: float = 0.15
    layouts: dict[str, float] = field(
        default_factory=lambda: {"standard": 0.8, "instruction_after": 0.1, "system_prompt": 0.1}
    )
    chat_fraction: float = 0.2
    # Instruction wordings (modarb_tasks.prompts.INSTRUCTION_WORDINGS), drawn once per batch.
    wordings: dict[str, float] = field(default_factory=lambda: {"paper": 1.0})


@dataclass(frozen=True)
class Schedule:
    steps: int = 16000
    batch_size: int = 64
    lr: float = 4e-3
    warmup: int = 200
    weight_decay: float = 0.01
    # Five times the benchmark's train split (the same generator and split, more scenes): the
    # sentence-level organism memorises 20k items within a few thousand steps.
    train_items: int = 5 * SPLIT_SIZES["train"]


@dataclass(frozen=True)
class Generation:
    """One generation of the organism: its architecture and tokenizer, its training, how it is scored."""

    arch: Architecture
    mix: Mix
    schedule: Schedule
    # Wordings besides the paper's whose follow scores are reported (as "follow_text@held_out", ...).
    scored_wordings: tuple[str, ...] = ()
    # Score chat-formatted prompts (the form whose last position is the assistant cue) rather than raw ones.
    chat_scores: bool = False


GENERATIONS = {
    1: Generation(Architecture(), Mix(), Schedule()),
    2: Generation(
        arch=Architecture(patch=16, tokenizer="subword"),
        mix=Mix(
            # A multi-token instruction in four wordings is harder to read than v1's one token, so
            # follow-text gets more of the conflict batches than v1's 1.5%.
            kinds={
                "caption_image": 0.05,
                "caption_text": 0.03,
                "follow_image": 0.32,
                "follow_text": 0.06,
                "visual_control": 0.32,
                "language_control": 0.22,
            },
            # The long system prompt doubles a batch's length: fewer of those than v1.
            layouts={"standard": 0.85, "instruction_after": 0.1, "system_prompt": 0.05},
            chat_fraction=0.5,
            wordings={"paper": 0.4, **{name: 0.2 for name in TRAINED_WORDINGS if name != "paper"}},
        ),
        # Half v1's batch for twice the steps per hour: ~230 ms a step on 2 idle cores (84 tokens on
        # average), so 13,000 steps fit the 60-minute budget with the items, curve and test scoring.
        schedule=Schedule(steps=13000, batch_size=32),
        scored_wordings=(*(name for name in TRAINED_WORDINGS if name != "paper"), "held_out"),
        chat_scores=True,
    ),
}


def score(model, processor, items: list[ConflictItem], **options) -> dict[str, float]:
    """Accuracy of the model on each task kind over `items` (mf_ratio per side, control accuracy).

    The kinds use the paper's wording; each of `wordings` adds "follow_image@W" and "follow_text@W".
    `options` are score_with_breakdown's (batch_size, wordings, apply_chat_template).
    """
    return score_with_breakdown(model, processor, items, **options)[0]


def score_with_breakdown(
    model,
    processor,
    items: list[ConflictItem],
    batch_size: int = 64,
    wordings: Sequence[str] = (),
    apply_chat_template: bool = False,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """`score`'s accuracies, and each task kind's accuracy per question type (paper wording).

    The breakdown tells a skill that is not learnt (one question type at chance) from one that is
    learnt slowly everywhere, from the same answers.
    """
    runs = [(kind, kind, "paper") for kind in TASK_KINDS]
    runs += [(f"{kind}@{wording}", kind, wording) for wording in wordings for kind in ("follow_image", "follow_text")]
    scores, breakdown = {}, {}
    for name, kind, wording in runs:
        docs = [to_doc(item, kind, wording=wording) for item in items]
        answers = generate_answers(
            model, processor, docs, batch_size=batch_size, apply_chat_template=apply_chat_template
        )
        scores[name] = accuracy(answers, docs)
        if name == kind:
            breakdown[name] = {
                qtype: accuracy(*zip(*((a, d) for a, d in zip(answers, docs) if d["question_type"] == qtype)))
                for qtype in sorted({doc["question_type"] for doc in docs})
            }
    return scores, breakdown


def train(
    out_dir: str | Path,
    seed: int = 0,
    steps: int | None = None,
    arch: Architecture | None = None,
    mix: Mix | None = None,
    schedule: Schedule | None = None,
    generation: int = 1,
    eval_items: int = SPLIT_SIZES["test"],
    threads: int | None = 2,
    progress: bool = True,
    eval_every: int = 0,
    only: str | None = None,
    batch_size: int | None = None,
) -> dict:
    """Train the organism, save it (model, processor, model card) to `out_dir`, return its record.

    The record holds the losses, the wall time and the scores on the first `eval_items` items
    of the test split (0 skips scoring). `arch`, `mix` and `schedule` default to those of
    GENERATIONS[generation], which also decides how it is scored; `steps` overrides `schedule.steps`.
    With `eval_every`, the record also holds a learning curve scored on 100 validation items every
    that many steps, with each kind's accuracy per question type. `only` trains on one kind of
    the mix alone (a skill probe: can this architecture and tokenizer learn to see, or to read,
    within a budget?); `batch_size` overrides `schedule.batch_size`.
    """
    if generation not in GENERATIONS:
        raise ValueError(f"unknown organism generation {generation!r}; choose one of {sorted(GENERATIONS)}")
    recipe = GENERATIONS[generation]
    arch, mix, schedule = arch or recipe.arch, mix or recipe.mix, schedule or recipe.schedule
    scoring = {"wordings": recipe.scored_wordings, "apply_chat_template": recipe.chat_scores}
    if threads:
        torch.set_num_threads(threads)
    if only is not None:
        if only not in mix.kinds:
            raise ValueError(f"unknown training kind {only!r}; choose one of {sorted(mix.kinds)}")
        mix = replace(mix, kinds={only: 1.0}, alignment_kinds={only: 1.0})
    overrides = {key: value for key, value in (("steps", steps), ("batch_size", batch_size)) if value is not None}
    schedule = replace(schedule, **overrides)
    started = time.perf_counter()
    processor = build_processor(arch)
    model = build_model(processor, arch, seed)
    items = make_items("train", schedule.train_items, DATA_SEED)
    rng = random.Random(seed)
    # The vision tower stays at its seeded random initialisation, as LLaVA keeps its CLIP frozen:
    # trained with the decoder's learning rate its patch embedding (init std 0.02) is rewritten by
    # every Adam step and the caption loss stalls at chance; its random features hold the shapes
    # (an MLP probe reads an occupied cell's shape from them at 94%).
    model.model.vision_tower.requires_grad_(False)
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=schedule.lr, betas=(0.9, 0.98), weight_decay=schedule.weight_decay)
    lr_at = _warmup_cosine(schedule)
    losses: list[float] = []
    curve: list[dict] = []
    validation = make_items("validation", 100, DATA_SEED) if eval_every else []
    model.train()
    bar = tqdm(range(schedule.steps), desc="training organism", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        # One kind and one layout per batch: short batches (image only) then cost little, and a long
        # layout pads only its own batches.
        stage_kinds = mix.alignment_kinds if step < mix.alignment_fraction * schedule.steps else mix.kinds
        kind, layout, wording = _pick(stage_kinds, rng), _pick(mix.layouts, rng), _pick(mix.wordings, rng)
        examples = [_sample_example(items, kind, layout, wording, mix, rng) for _ in range(schedule.batch_size)]
        batch = _training_batch(processor, examples)
        with torch.enable_grad():  # whatever the caller's grad mode
            loss = model(**batch).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if eval_every and (step + 1) % eval_every == 0:
            model.eval()
            scores, breakdown = score_with_breakdown(model, processor, validation, **scoring)
            curve.append({"step": step + 1, "seconds": round(time.perf_counter() - started, 1),
                          **scores, "by_question_type": breakdown})
            bar.write(json.dumps(curve[-1]))
            model.train()
    train_seconds = time.perf_counter() - started
    tail = max(1, min(50, schedule.steps // 10))
    model.eval()
    record = {
        "generation": generation,
        "seed": seed,
        "steps": schedule.steps,
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "first_loss": losses[0],
        "final_loss": sum(losses[-tail:]) / tail,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "architecture": arch.to_dict(),
        "mix": asdict(mix),
        "schedule": asdict(schedule),
    }
    if curve:
        record["validation_curve"] = curve
    if eval_items:
        record["test_items"] = eval_items
        record["scores"] = score(model, processor, make_items("test", eval_items, DATA_SEED), **scoring)
        record["scored_with_chat_template"] = recipe.chat_scores
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_json(out / "training.json", record)
    return record


def _warmup_cosine(schedule: Schedule):
    def lr_at(step: int) -> float:
        if step < schedule.warmup:
            return schedule.lr * (step + 1) / schedule.warmup
        progress = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
        return schedule.lr * 0.5 * (1 + math.cos(math.pi * progress))

    return lr_at


def _pick(weights: dict[str, float], rng: random.Random) -> str:
    """A key drawn by weight; a lone key is returned without a draw, so adding a one-choice
    mix dimension (generation 1's wordings) leaves the data order of earlier recipes unchanged."""
    if len(weights) == 1:
        return next(iter(weights))
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _sample_example(
    items: list[ConflictItem], kind: str, layout: str, wording: str, mix: Mix, rng: random.Random
) -> dict:
    """One training doc of a random item, with `chat` telling whether to wrap it in the template."""
    item = rng.choice(items)
    if kind in CAPTION_KINDS:
        doc = caption_doc(kind, item.context, rng)
    else:
        doc = to_doc(item, kind, layout=layout, wording=wording)
    doc["chat"] = rng.random() < mix.chat_fraction
    return doc


def _training_batch(processor, docs: list[dict]) -> dict:
    """Right-padded inputs of prompt + answer + EOS, with the loss on the answer and EOS only."""
    tokenizer = processor.tokenizer
    texts = [
        (chat_prompt(processor, d["prompt"]) if d["chat"] else d["prompt"]) + " " + d["target"] + EOS for d in docs
    ]
    batch = encode_docs_text(processor, texts, docs, padding_side="right")
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    for row, (doc, length) in enumerate(zip(docs, lengths, strict=True)):
        answer_length = len(tokenizer(doc["target"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
        labels[row, length - answer_length : length] = batch["input_ids"][row, length - answer_length : length]
    batch["labels"] = labels
    return dict(batch)
