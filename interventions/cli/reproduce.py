"""`modarb reproduce`: the paper's experiments on one model (default: the bundled organism)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from interventions.analysis.data import add_data_arguments
from interventions.analysis.defaults import EXACT_SWEEPS, METHODS, ReproduceConfig
from interventions.cli.arguments import config_from, shared_flags
from modarb_tasks.errors import ModarbError
from modarb_tasks.files import check_writable
from modarb_tasks.outdir import check_out


def register(subparsers) -> None:
    defaults = ReproduceConfig()
    parser = subparsers.add_parser(
        "reproduce",
        parents=[shared_flags(defaults, help={"out": "report folder (default: %(default)s)",
                                              "batch_size": "default: %(default)s"})],
        help="reproduce the Instruction Anchor experiments on one model and write a report folder",
        description="Baseline, information flow, head identification, blocking curve (top vs random heads) and "
        "amplification on failed items, each intervention scored by lm-eval on modality following and both "
        "ability controls. Writes report.md, summary.json, figures, specs and every run's lm-eval results.",
    )
    parser.add_argument("--limit", type=int, default=defaults.limit, help="test items (MC²: test-half items) per task scored by lm-eval (default: %(default)s)")
    parser.add_argument("--top", type=float, default=defaults.top, help="fraction of heads in the top set (default: %(default)s)")
    parser.add_argument("--fractions", type=_floats, default=defaults.fractions, help="blocking curve fractions, comma-separated")
    parser.add_argument("--draws", type=int, default=defaults.draws, help="random head sets per fraction (default: %(default)s)")
    parser.add_argument("--alphas", type=_floats, default=defaults.alphas, help="amplification factors, comma-separated")
    parser.add_argument("--method", choices=METHODS, default=defaults.method,
                        help="ranking that picks the heads (default: %(default)s)")
    parser.add_argument("--analysis-items", type=int, default=defaults.analysis_items,
                        help="validation (MC²: analysis-half) items per instruction side for flow and identify "
                        "(default: %(default)s)")
    parser.add_argument("--learned-steps", type=int, default=defaults.learned_steps,
                        help="optimisation steps of the learned head mask, per start (default: %(default)s)")
    parser.add_argument("--amplify-items", type=int, default=defaults.amplify_items,
                        help="validation (MC²: analysis-half) items per task that fit the amplification gates and "
                        "choose the sweep's alpha (default: %(default)s; more than --analysis-items, as the gates "
                        "learn from the failed items only)")
    parser.add_argument("--window", type=int, default=defaults.window, help="flow knockout window in layers (default: the odd count nearest 30%% of the depth)")
    parser.add_argument("--use-cache", type=Path, default=None, metavar="DIR",
                        help="keep lm-eval's answers in DIR (keyed by model and spec): an interrupted run "
                        "started again with the same DIR resumes instead of recomputing")
    parser.add_argument("--exact-sweep", choices=EXACT_SWEEPS, default=defaults.exact_sweep,
                        help="identify's exact sweeps: every head on models of at most 64 heads, else a shortlist "
                        "(the cheap rankings' top heads; 'full': every head) (default: %(default)s)")
    parser.add_argument("--steer", action=argparse.BooleanOptionalAction, default=None,
                        help="residual steering beside amplification: directions fitted, layer and alpha chosen on "
                        "validation, scored on test in the same table (default: on for the bundled organism, off "
                        "for other models, where it adds about a tenth to the run's time: see --plan)")
    parser.add_argument("--plan", action="store_true",
                        help="print the work plan (forwards, decoder layer-tokens, estimated H100 minutes per phase) "
                        "from the model's config and processor, load no weights, and exit")
    parser.add_argument("--controls", default="", metavar="TASKS",
                        help="lm-eval tasks or groups (comma-separated, e.g. mmmu_val,arc_easy) also scored under the "
                        "baseline and every reported intervention, each by its own primary metric: the report's "
                        "'Preserved ability' table. Their data must be in the local HF cache")
    parser.add_argument("--include_path", type=Path, default=None, metavar="DIR",
                        help="folder of your own task YAMLs, for --controls (as lm-eval's --include_path)")
    parser.add_argument("--controls-limit", type=int, default=None, metavar="N",
                        help="docs per control task (default: all)")
    parser.add_argument("--controls-on", dest="controls_on_curve", choices=("curve",), default=None,
                        help="'curve': score the controls on every run of the blocking curve too")
    add_data_arguments(parser)
    parser.set_defaults(func=_run)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _check_fractions(flag: str, fractions: tuple[float, ...]) -> None:
    """Head fractions: one or more, each in (0, 1)."""
    if not fractions or not all(0 < fraction < 1 for fraction in fractions):
        raise ModarbError(f"{flag} {','.join(map(str, fractions)) or repr('')} must be one or more fractions of the "
                          "heads in (0, 1), comma-separated (e.g. 0.05 for 5%)")


def _check_controls(args: argparse.Namespace) -> None:
    """--controls text -> task names; its companion flags only with it."""
    from interventions.analysis.controls import parse_names

    given = [flag for flag, value in (("--include_path", args.include_path), ("--controls-limit", args.controls_limit),
                                      ("--controls-on", args.controls_on_curve)) if value is not None]
    if given and not args.controls:
        raise ModarbError(f"{given[0]} applies to --controls tasks; add --controls TASKS (e.g. --controls arc_easy)")
    if args.controls_limit is not None and args.controls_limit < 1:
        raise ModarbError(f"--controls-limit must be at least 1, not {args.controls_limit}")
    args.controls = parse_names(args.controls) if args.controls else ()
    args.include_path = args.include_path.resolve() if args.include_path is not None else None
    args.controls_on_curve = args.controls_on_curve == "curve"


def _run(args: argparse.Namespace) -> int:
    from interventions.model.model_files import check_device

    for name in ("limit", "batch_size", "draws", "analysis_items", "learned_steps", "amplify_items"):
        if getattr(args, name) < 1:
            raise ModarbError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.window is not None and args.window < 1:
        raise ModarbError(f"--window must be at least 1 layer, not {args.window}")
    _check_controls(args)
    _check_fractions("--top", (args.top,))
    _check_fractions("--fractions", args.fractions)
    if not args.alphas or not all(math.isfinite(alpha) and alpha > 0 for alpha in args.alphas):
        raise ModarbError(f"--alphas {','.join(map(str, args.alphas)) or repr('')} must be one or more finite numbers "
                          "> 0, comma-separated (e.g. 2,4: each amplifies the top heads by that factor)")
    if not args.plan:  # a plan writes nothing
        check_out(args.out)
        if args.use_cache is not None:
            check_writable(args.use_cache, "--use-cache")
    check_device(args.device)
    config = config_from(ReproduceConfig, args)
    if args.plan:
        from interventions.analysis.plan import reproduce_work, table

        print(table(reproduce_work(config)))
        return 0
    from interventions.analysis.reproduce import reproduce  # torch and lm-eval: after the checks, so bad input is quick

    summary = reproduce(config)
    columns = ("follow_image", "follow_text", "mf_ratio", "visual_control", "language_control")
    print(f"\n{'run':<26}" + "".join(f"{c:>18}" for c in columns))
    rows = [("baseline", summary["baseline"]), (f"block top ({config.method})", summary["block_top"])]
    rows += [(f"block top ({method})", run) for method, run in summary["block_top_by_ranking"].items()
             if method != config.method]
    rows += [("block random (mean)", summary["block_random"])]
    for name, scores in rows:
        print(f"{name:<26}" + "".join(f"{scores[c]:>18.3f}" for c in columns))
    amplify = summary["amplify"]
    print(f"amplify (learned gates): restored {amplify['restoration_rate']:.3f} of {amplify['failed_items']} failed "
          f"items, broke {amplify['broken_rate']:.3f} of {amplify['followed_items']} followed; fixed x"
          f"{amplify['best_alpha']:g} (chosen on validation): restored "
          f"{amplify['sweep_at_best_alpha']['restoration_rate']:.3f}, broke "
          f"{amplify['sweep_at_best_alpha']['broken_rate']:.3f}")
    for setting in summary.get("steer", {}).get("settings", []):
        test = setting["test"]
        print(f"steer {setting['direction']} (layer {setting['layer']} x{setting['alpha']:g}, chosen on validation): "
              f"restored {test['restoration_rate']:.3f}, broke {test['broken_rate']:.3f}, other {test['other']:.3f}")
    if "steer" in summary:
        print(f"best on test by restored - 2 x broken - control drops: {summary['steer']['comparison']['best']}")
    print()
    print(f"report: {config.out / 'report.md'}")
    for target in summary["targets"]:
        print(f"  {'met   ' if target['met'] else 'MISSED'} {target['check']}: {target['value']:.3f} (bar {target['bar']})")
    return 0
