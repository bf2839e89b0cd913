"""`modarb organism train|path`: retrain the bundled organism, or print where its weights are.

Training never overwrites a folder that already holds a model (the shipped weights included)
unless asked with --force, and --force overwrites only a model this command trained (or an earlier
modarb output folder), never a folder of the user's; the default output is a new timestamped folder. The output folder is
checked before training starts, and without --force the model is written to a hidden folder and
moved into place at the end, so an error or Ctrl-C leaves no half-saved model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from interventions.organism.captions import CAPTION_KINDS
from modarb_tasks.docs import TASK_KINDS
from modarb_tasks.errors import ModarbError
from modarb_tasks.outdir import OutputFolder, check_out, check_writable, staged

# What `--only` may name: the kinds of the recipe's mix (the caption kinds of its alignment stage too).
TRAINING_KINDS = (*CAPTION_KINDS, *TASK_KINDS)


def register(subparsers) -> None:
    parser = subparsers.add_parser("organism", help="the bundled model organism: retrain it or print its path")
    commands = parser.add_subparsers(dest="organism_command", metavar="SUBCOMMAND", required=True)

    train = commands.add_parser("train", help="train the organism with the recipe (CPU, deterministic in --seed)")
    train.add_argument("--generation", type=int, choices=(1, 2), default=1,
                       help="which recipe: 1 = the shipped organism (sentence tokens, 4 image tokens), "
                            "2 = subword tokens, 16 image tokens, several instruction wordings (default: 1)")
    train.add_argument("--out", type=Path, default=None, help="output folder (default: ./organism-<timestamp>)")
    train.add_argument("--seed", type=int, default=0, help="model init and data order seed (default: 0)")
    train.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    train.add_argument("--eval-every", type=int, default=2000, help="score 100 validation items every N steps (0: never)")
    train.add_argument("--eval-items", type=int, default=500, help="test-split items to score at the end (0: none)")
    train.add_argument("--batch-size", type=int, default=None, help="examples per step (default: the recipe's)")
    train.add_argument("--only", choices=TRAINING_KINDS, default=None,
                       help="train on this one kind of the mix alone: a skill probe of the recipe's architecture "
                            "and tokenizer (see its learning curve with --eval-every); not a shippable organism")
    train.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2; the shipped run used 2)")
    train.add_argument("--force", action="store_true", help="overwrite a folder that already holds a model")
    train.set_defaults(func=_train)

    path = commands.add_parser("path", help="print the shipped weights folder")
    path.set_defaults(func=_path)


def _train(args: argparse.Namespace) -> int:
    out = args.out or Path(f"organism-{time.strftime('%Y%m%d-%H%M%S')}")
    for flag, value, least in (("--steps", args.steps, 1), ("--threads", args.threads, 1),
                               ("--batch-size", args.batch_size, 1), ("--eval-every", args.eval_every, 0),
                               ("--eval-items", args.eval_items, 0)):
        if value is not None and value < least:
            raise ModarbError(f"{flag} {value} must be at least {least}")
    if (out / "config.json").exists() and not args.force:
        raise ModarbError(f"{out} already holds a model; choose another --out or pass --force to overwrite it")
    in_place = args.force and _is_trained_organism(out)
    if args.force and not in_place:
        check_out(out)  # --force replaces a model modarb trained, never a folder of the user's
    check_writable(out)
    from interventions.organism.card import write_model_card
    from interventions.organism.recipe import train

    with nullcontext(OutputFolder.of(out)) if in_place else staged(out) as folder:
        record = train(folder.work, seed=args.seed, steps=args.steps, generation=args.generation,
                       eval_items=args.eval_items, threads=args.threads, eval_every=args.eval_every,
                       only=args.only, batch_size=args.batch_size)
        write_model_card(folder.work, record)
    print(json.dumps({"out": str(out), **{k: record[k] for k in ("generation", "seed", "steps", "train_seconds")},
                      "scores": record.get("scores")}, indent=2))
    return 0


def _is_trained_organism(folder: Path) -> bool:
    """True when `folder` holds a model `organism train` wrote (its training record beside the weights)
    and nothing else: --force may then overwrite it in place, the shipped weights included."""
    if not (folder / "training.json").is_file() or not (folder / "config.json").is_file():
        return False
    written = {"README.md", "training.json", "config.json", "generation_config.json", "model.safetensors",
               "processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    return all(path.name in written for path in folder.iterdir())


def _path(args: argparse.Namespace) -> int:
    from interventions.organism import organism_path

    print(organism_path())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the `organism` command on its own (`python -m interventions.cli.organism train ...`)."""
    from interventions.cli import main as modarb

    return modarb(["organism", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
