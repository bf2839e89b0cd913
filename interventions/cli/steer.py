"""`modarb steer`: fit residual steering directions on validation, choose layer and alpha there,
score the chosen settings on the test split with lm-eval (`interventions.analysis.steer` does the work).

This module reads the flags and turns bad ones into one line before any model is loaded.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from interventions.analysis.data import add_data_arguments
from interventions.cli.arguments import shared_flags
from interventions.analysis.defaults import STEER_DIRECTIONS as DIRECTIONS
from modarb_tasks.errors import ModarbError
from modarb_tasks.outdir import check_out, staged

DEFAULT_ALPHAS = "-1,-0.5,-0.25,-0.1,0.1,0.25,0.5,1"


def register(subparsers) -> None:
    flags = shared_flags(out=Path("reports/steer"), batch_size=64, model=None, device=None, dtype="float32",
                         trust_remote_code=False, help={"batch_size": "default: %(default)s"})
    parser = subparsers.add_parser(
        "steer",
        parents=[flags],
        help="fit a residual-stream steering direction on validation, choose layer and alpha there, score it on test",
        description="Difference-of-means directions in the residual stream (follow-image minus follow-text; followed "
        "minus failed; optionally the first principal component), one per decoder layer, fitted on the validation "
        "split (MC²: analysis half). Layer and alpha are chosen there by restored - 2 x broken - control drops; "
        "lm-eval then scores each chosen setting on the test split: restored and broken items against the baseline, "
        "both controls and the share of answers naming neither side. Writes steer.json, steer.md and one spec "
        "(+ vector) per direction.",
    )
    parser.add_argument("--directions", default="modality,following",
                        help=f"comma-separated, from {', '.join(DIRECTIONS)} (default: %(default)s)")
    parser.add_argument("--alphas", default=DEFAULT_ALPHAS, help="steering strengths tried on validation "
                        "(default: %(default)s)")
    parser.add_argument("--layers", default=None, help="comma-separated decoder layers to try (default: all)")
    parser.add_argument("--positions", choices=("last", "all"), default="last",
                        help="where the direction is fitted and added: the answer positions or every position "
                        "(default: %(default)s)")
    parser.add_argument("--n-items", type=int, default=100,
                        help="validation items per task kind (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=200, help="test items per task scored by lm-eval "
                        "(default: %(default)s)")
    add_data_arguments(parser)
    parser.set_defaults(func=run)


def _numbers(flag: str, text: str | None, kind=float) -> tuple | None:
    if text is None:
        return None
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ModarbError(f"{flag} {text!r} must be comma-separated numbers") from None
    if not values or any(not math.isfinite(value) for value in values):
        raise ModarbError(f"{flag} {text!r} must list at least one finite number")
    return values


def parse_options(args: argparse.Namespace):
    """SteerOptions from the flags (one-line ModarbError for the first that cannot work)."""
    directions = tuple(part.strip() for part in args.directions.split(",") if part.strip())
    unknown = [name for name in directions if name not in DIRECTIONS]
    if unknown or not directions:
        raise ModarbError(f"--directions {args.directions!r}: choose from {', '.join(DIRECTIONS)}")
    alphas = _numbers("--alphas", args.alphas)
    layers = _numbers("--layers", args.layers, int)
    if layers is not None and min(layers) < 0:
        raise ModarbError(f"--layers {args.layers!r} must be decoder layer numbers >= 0")
    for flag, value in (("--n-items", args.n_items), ("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ModarbError(f"{flag} {value} must be at least 1")
    from interventions.analysis.steer import SteerOptions

    return SteerOptions(directions=directions, alphas=alphas, layers=layers, positions=args.positions)


def run(args: argparse.Namespace) -> int:
    from interventions.model.model_files import check_device

    options = parse_options(args)
    check_out(args.out)
    check_device(args.device)
    from interventions.analysis.data import CONTROL_KINDS, FOLLOW_KINDS, analysis_docs, docs_line, resolve_data
    from interventions.analysis.plan import read_model
    from interventions.analysis.steer import SteerRun, run_steer

    source = resolve_data(args.data, args.mc2_json, args.mc2_images,
                          uses=[("analysis", args.n_items), ("test", args.limit)])
    model_config, processor = read_model(args.model, args.trust_remote_code)  # bad data: before any weights load
    docs, dropped = analysis_docs(source, model_config, processor.tokenizer, args.n_items,
                                  (*FOLLOW_KINDS, *CONTROL_KINDS))
    print(docs_line(source, docs, dropped))
    config = SteerRun(model=args.model, n_items=args.n_items, limit=args.limit, batch_size=args.batch_size,
                      device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, options=options)
    with staged(args.out) as out:
        summary = run_steer(config, out, source, docs, dropped)
    for setting in summary["settings"]:
        test = setting["test"]
        print(f"steer {setting['direction']}: layer {setting['layer']} x{setting['alpha']:g} (validation) -> test "
              f"restored {test['restored']}/{test['failed']}, broke {test['broken']}/{test['followed']}, "
              f"visual control {test['visual_control']:.3f}, language control {test['language_control']:.3f}, "
              f"other {test['other']:.3f}")
    print(f"steer: wrote {args.out / 'steer.md'}")
    return 0
