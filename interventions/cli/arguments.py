"""The flags every analysis command shares (which model, on which device and dtype, how many docs per forward,
which seed, where to write), declared once, as a parent parser; each command's defaults come from its config."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

HELP = {  # a command whose flag means something narrower says so in its own words (`help=`)
    "out": "output folder (default: %(default)s)",
    "batch_size": "docs per forward (default: %(default)s)",
    "seed": "default: %(default)s",
}


def shared_flags(defaults=None, *, help: dict[str, str] | None = None, **more) -> argparse.ArgumentParser:
    """A parent parser (`add_parser(..., parents=[...])`) with --model, --device, --dtype and --trust-remote-code,
    and --out, --batch-size and --seed where the command has them; each default read from `defaults` (the
    command's config dataclass) or `more` (the rest). `help`: flag (as a field name) -> its own help text."""
    values = ({field.name: getattr(defaults, field.name) for field in dataclasses.fields(defaults)}
              if defaults is not None else {}) | more
    texts = HELP | (help or {})
    parser = argparse.ArgumentParser(add_help=False)
    if "out" in values:
        parser.add_argument("--out", type=Path, default=values["out"], help=texts["out"])
    if "batch_size" in values:
        parser.add_argument("--batch-size", type=int, default=values["batch_size"], help=texts["batch_size"])
    if "seed" in values:
        parser.add_argument("--seed", type=int, default=values["seed"], help=texts["seed"])
    device = values["device"]
    parser.add_argument("--model", default=values["model"],
                        help="model folder or cached hub id (default: the bundled organism)")
    parser.add_argument("--device", default=device,
                        help="cpu, cuda, cuda:1 ... (default: " + (device or "cuda if available") + ")")
    parser.add_argument("--dtype", default=values["dtype"], help="float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--trust-remote-code", action="store_true", default=values["trust_remote_code"],
                        help="allow the model folder's own Python code (needed by some families; off by default: it "
                        "runs code from the folder)")
    return parser


def config_from(cls, args: argparse.Namespace, **given):
    """`cls` (a config dataclass) from the parsed flags of the same names, and `given` for the rest."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in vars(args).items() if name in names} | given)
