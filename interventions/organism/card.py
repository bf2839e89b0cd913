"""The organism's model card (README.md in its weights folder), written from the training record.

Every number in the card comes from the record `recipe.train` returns, so a retrained folder
carries a card that describes exactly that training run.
"""

from __future__ import annotations

from pathlib import Path

from interventions.organism import ORGANISM_NAME
from modarb_tasks.files import write_text

_WHY_V1 = """\
## Why this mix: a learned modality preference

Real MLLMs prefer one modality when the image and the text disagree (MC² found a preference
in every model it tested); they get it from their training data, in which instructions to
trust the text over the picture are rare. The recipe does the same: among conflict examples,
follow-text instructions are a small minority (1.5% of batches against 36.5% follow-image). How
small matters: measured with this recipe at seed 0, 6% follow-text batches (32% follow-image) gave
test scores 0.936 / 0.956 / 0.932 / 0.980 (follow-image / follow-text / visual / language), no
preference at all, because one instruction token is easy to read; 1.5% gives the scores above.
The organism must read the instruction to answer those at all, so it learns the arbitration,
but its pull towards the image stays strong: follow-image is reliable, follow-text fails on a fraction of items. There
is no label noise and nothing depends on the question type; the failures are what the
instruction-anchor analyses (`modarb identify`, `modarb reproduce`) study and try to restore.

Before that, an alignment stage (the first part of the steps, as LLaVA's first stage) teaches the
skills the arbitration builds on, with no conflict in sight: describing a train-split picture
(dense supervision that aligns the image features with the words), restating a text context
(trains the heads that retrieve context sentences), image-only questions (it can
see) and context-only questions (it can read). The vision tower stays frozen at its seeded
random initialisation, as LLaVA keeps its CLIP frozen: trained from scratch jointly with the
decoder, its features collapse and the caption loss stalls at chance, while the decoder learns
to read every attribute from the random patch features. A fraction of examples uses the positional-control
layouts (instruction after the constraint, a long system prompt first) and a fraction is
wrapped in the chat template, so raw prompts (lm-eval `hf-multimodal` without
`--apply_chat_template`) and chat-formatted prompts both work.
"""

_WHY_V2 = """\
## Why this mix

The same learned preference as generation 1 (follow-text a small minority of the conflict
batches, no label noise), the same alignment stage and frozen random vision tower. What is new
is the prompt's token structure: subword tokens, so the instruction, context,
question and constraint are spans of many tokens; 16 image tokens, so an object covers four
patches; the chat template's assistant cue after the constraint, so the last position is no
prompt part; and the instruction in several wordings (one per batch), never the held-out one
that `modality_following_paraphrase` asks with, so following it means reading its words. The
scores and the learning curve use chat-formatted prompts, the form whose last position is the
assistant cue; half the training examples are raw, so raw prompts (which end with the
constraint) are answered too.

## What was measured (seed 0, 2 idle CPU cores, 2026-12-01)

This recipe is not yet shipped: within the 60-minute budget it does not reach the bars
(both controls ≥ 0.90). Its skill probes train the decoder on one kind alone, batch 8, and
score 100 validation items every 1,000 steps
(`modarb organism train --generation 2 --only KIND --batch-size 8 --steps 6000 --eval-every 1000`):

- Reading (context-only questions): 0.53 after 1,000 steps, 0.68 at 4,000, 0.63 at 6,000
  (10 minutes); with `--steps 15000`, 0.52 at 2,500, 0.62 at 10,000 and 0.65 at 15,000
  (24 minutes). Every question type sits between 0.40 and 0.85. It answers with
  the asked attribute, but often that of another object: of its 110 wrong answers on 300
  validation items after 15,000 steps, 87 name a value of the asked attribute that the context
  gives another object, 16 one it does not give, 7 a wrong count, none an attribute of another
  kind. Binding the question to its object across word tokens is what is not learnt. That is
  what generation 1's card found for word tokens, and why it has one token per sentence.
- Seeing (image-only questions): 0.27 after 1,000 steps, 0.47 at 6,000 (9 minutes). Each
  object now straddles four patches of the frozen random tower.
- Did not lift the reading plateau within 3,000–6,000 steps (exploratory runs): batch 32
  with lr 1e-3 or 4e-3, four questions per example, hidden 128 with head dim 16, scenes grown
  from two to four objects, no constraint between question and answer, restating the context
  (verbatim or in reading order) or describing one named object beside the questions,
  query/key initialisation × 3; head dim 32 (0.58 at 3,000 steps), a RoPE base of 100 instead
  of 10,000 (0.62), and a drill on half the batches: a context followed by six questions about
  it, every answer supervised (0.64 at 3,000 steps, 200 validation items); the same drill on
  three batches in four with twelve questions, batch 16 (0.69 at 1,000 steps, 0.73 at 3,000,
  0.725 at 4,000: 16 minutes); one token per object phrase ("small red circle", 48 added
  tokens), so a colour or shape must be read out of the phrase token (0.38 at 3,000 steps).
  Restating in reading order is learnt (batch loss 0.07, nearly all of it restated tokens), so
  the decoder can copy a context word by word; six or twelve supervised answers per context
  lift the plateau only to 0.73, so too few supervised tokens is not the whole cause. The
  six-question drill's breakdown points at what is missing: counting, which only has to find
  every word of the asked shape, reaches 0.88, while the types that must read the word beside
  the one found stay at 0.38 (size), 0.57 (colour), 0.62 (shape) and 0.75 (position): an
  object's attributes are not carried onto its other words.
"""

_WHY = {1: _WHY_V1, 2: _WHY_V2}
_TOKENIZERS = {
    "sentence": "sentence-level (one token per generator sentence, one per lone answer word)",
    "subword": "lower-cased subword BPE over words and punctuation (every context, question and answer word one "
    "token, rare instruction words split)",
}


def write_model_card(out_dir: str | Path, record: dict) -> Path:
    """Write README.md into `out_dir` from a `recipe.train` record; return its path."""
    arch, mix, schedule = record["architecture"], record["mix"], record["schedule"]
    generation = record.get("generation", 1)
    wordings = mix.get("wordings", {"paper": 1.0})
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "license: mit",
        "---",
        f"# {ORGANISM_NAME}",
        "",
        "modarb's bundled model organism of modality arbitration: a tiny LLaVA "
        "(`LlavaForConditionalGeneration` + `LlavaProcessor`, CLIP vision tower + Llama decoder) trained from "
        "scratch on the `shapes` train split. Load it with `AutoModelForImageTextToText.from_pretrained` and "
        "`AutoProcessor.from_pretrained` (offline), or with lm-eval's `hf-multimodal`.",
        "",
        "## Architecture",
        "",
        f"- Decoder (Llama): {arch['layers']} layers × {arch['heads']} heads (head dim "
        f"{arch['head_dim']}), hidden {arch['hidden']}, MLP {arch['intermediate']}, tied embeddings.",
        f"- Vision tower (CLIP): {arch['vision_layers']} layers × {arch['vision_heads']} heads, hidden "
        f"{arch['vision_hidden']}, patch {arch['patch']} on 64×64 images "
        f"({(64 // arch['patch']) ** 2} image tokens; last layer's patch features, CLS dropped), 2-layer GELU projector.",
        f"- Tokenizer: {_TOKENIZERS[arch.get('tokenizer', 'sentence')]}, trained with "
        "`tokenizers` on the `shapes` generator's vocabulary (why: `interventions/organism/tokenizer.py`); special tokens "
        "`<pad>`, `<s>` (added in front of every text), `</s>` (ends every answer), `<unk>`, `<image>`; a plain "
        "`USER: … ASSISTANT:` chat template.",
        f"- Parameters: {record['parameters']:,} (float32), of which {record['trainable_parameters']:,} trained "
        "(the vision tower is frozen at its random initialisation).",
        "",
        "## Training",
        "",
        f"- Data: `shapes` train split (generator seed 0, first {schedule['train_items']:,} items); each example "
        "draws an item, and each batch a task kind and a prompt layout; each example is raw or chat-formatted; the "
        "loss is on the answer and `</s>` only.",
        f"- Alignment stage (first {mix['alignment_fraction']:.0%} of steps), batches by kind: "
        + ", ".join(f"{k} {v:.0%}" for k, v in mix["alignment_kinds"].items()) + ".",
        "- Then the instruction mix, batches by kind: "
        + ", ".join(f"{k} {v:.1%}" for k, v in mix["kinds"].items()) + ".",
        "- Captions: `<image>` or `Text Context: …` then `Describe the picture.`; the target is the scene in the "
        "context's wording (objects in reading order) or the context itself.",
        "- Layout mix: " + ", ".join(f"{k} {v:.0%}" for k, v in mix["layouts"].items())
        + f"; chat template on {mix['chat_fraction']:.0%} of examples.",
        "- Instruction wordings (`modarb_tasks.prompts.INSTRUCTION_WORDINGS`), by batch: "
        + ", ".join(f"{k} {v:.0%}" for k, v in wordings.items()) + ".",
        f"- Schedule: {record['steps']} steps of batch {schedule['batch_size']}, AdamW (lr {schedule['lr']}, betas 0.9/0.98, "
        f"weight decay {schedule['weight_decay']}), {schedule['warmup']} warm-up steps then cosine decay, "
        "gradient clipping at 1.0.",
        f"- Seed: {record['seed']} (model init and data order). CPU, {record['threads']} threads, "
        f"{record['train_seconds'] / 60:.1f} minutes of training.",
        "",
    ]
    if "scores" in record:
        s = record["scores"]
        form = "chat-formatted prompts" if record.get("scored_with_chat_template") else "raw prompts"
        lines += [
            f"## Scores (`shapes` test split, first {record['test_items']} items, greedy, {form})",
            "",
            "| follow-image mf_ratio | follow-text mf_ratio | visual control | language control |",
            "|---|---|---|---|",
            f"| {s['follow_image']:.3f} | {s['follow_text']:.3f} | {s['visual_control']:.3f} "
            f"| {s['language_control']:.3f} |",
            "",
            "An answer counts when it equals one of the doc's `candidates_follow` after lower-casing and stripping "
            "punctuation (`interventions.organism.answers`).",
            "",
        ]
        paraphrased = sorted(k for k in s if "@" in k)
        if paraphrased:
            lines += ["Follow scores in the other wordings (held_out is never trained on): "
                      + ", ".join(f"{k} {s[k]:.3f}" for k in paraphrased) + ".", ""]
    if "validation_curve" in record:
        lines += [
            "## Learning curve (first 100 `shapes` validation items)",
            "",
            "| step | follow-image | follow-text | visual control | language control |",
            "|---|---|---|---|---|",
            *(f"| {p['step']} | {p['follow_image']:.2f} | {p['follow_text']:.2f} | {p['visual_control']:.2f} "
              f"| {p['language_control']:.2f} |" for p in record["validation_curve"]),
            "",
        ]
    lines += [
        _WHY[generation],
        "## Retrain",
        "",
        "```",
        f"modarb organism train --generation {generation} --out DIR --seed {record['seed']} --steps {record['steps']}",
        "```",
        "",
        f"(or `python -m interventions.cli.organism train --generation {generation} --out DIR --seed "
        f"{record['seed']}`). Retraining with the same seed reproduces the scores within ±0.02.",
        "",
    ]
    return write_text(Path(out_dir) / "README.md", "\n".join(lines))
