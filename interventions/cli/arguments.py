"""The flags every analysis command shares (which model, on which device, in which dtype), declared once."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser, *, device: str | None) -> None:
    """--model, --device (default `device`; None: cuda when available), --dtype and --trust-remote-code."""
    parser.add_argument("--model", default=None, help="model folder or cached hub id (default: the bundled organism)")
    parser.add_argument("--device", default=device,
                        help="cpu, cuda, cuda:1 ... (default: " + (device or "cuda if available") + ")")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model folder's own Python code (needed by some families; off by default: it "
                        "runs code from the folder)")
