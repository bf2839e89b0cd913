"""The organism's training recipe: data mix, schedule and seed, deterministic on the CPU.

The mix is what gives the organism its modality preference, the way real MLLMs get one:
instruction-tuning data rarely asks a model to trust the text over the picture, so here
follow-text examples are a small minority of the conflict examples. The model learns to
read the instruction (it must, to answer the follow-text ones) but leans on the image
when the instruction's pull is weak, so follow-text fails on a fraction of items while
follow-image is reliable. Controls (image only, context only) teach it to see and read.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
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


def score(model, processor, items: list[ConflictItem], batch_size: int = 64) -> dict[str, float]:
    """Accuracy of the model on each task kind over `items` (mf_ratio per side, control accuracy)."""
    scores = {}
    for kind in TASK_KINDS:
        docs = [to_doc(item, kind) for item in items]
        scores[kind] = accuracy(generate_answers(model, processor, docs, batch_size=batch_size), docs)
    return scores


def train(
    out_dir: str | Path,
    seed: int = 0,
    steps: int | None = None,
    arch: Architecture = Architecture(),
    mix: Mix = Mix(),
    schedule: Schedule = Schedule(),
    eval_items: int = SPLIT_SIZES["test"],
    threads: int | None = 2,
    progress: bool = True,
    eval_every: int = 0,
) -> dict:
    """Train the organism, save it (model, processor, model card) to `out_dir`, return its record.

    The record holds the losses, the wall time and the scores on the first `eval_items` items
    of the test split (0 skips scoring). `steps` overrides `schedule.steps`. With `eval_every`,
    the record also holds a learning curve scored on 100 validation items every that many steps.
    """
    if threads:
        torch.set_num_threads(threads)
    if steps is not None:
        schedule = Schedule(**{**asdict(schedule), "steps": steps})
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
        kind, layout = _pick(stage_kinds, rng), _pick(mix.layouts, rng)
        batch = _training_batch(processor, [_sample_example(items, kind, layout, mix, rng) for _ in range(schedule.batch_size)])
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
            curve.append({"step": step + 1, **score(model, processor, validation)})
            bar.write(json.dumps(curve[-1]))
            model.train()
    train_seconds = time.perf_counter() - started
    tail = max(1, min(50, schedule.steps // 10))
    model.eval()
    record = {
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
        record["scores"] = score(model, processor, make_items("test", eval_items, DATA_SEED))
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
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _sample_example(items: list[ConflictItem], kind: str, layout: str, mix: Mix, rng: random.Random) -> dict:
    """One training doc of a random item, with `chat` telling whether to wrap it in the template."""
    item = rng.choice(items)
    doc = caption_doc(kind, item.context, rng) if kind in CAPTION_KINDS else to_doc(item, kind, layout=layout)
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
