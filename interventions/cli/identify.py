"""`modarb identify`: rank every decoder head's role in modality arbitration and write a block spec.

The work and the output folder are `identify.run_identify`'s; this module reads the flags and
turns bad ones into one line before any model is loaded.
"""

from __future__ import annotations

import argparse

from interventions.analysis.data import add_data_arguments
from interventions.cli.arguments import config_from, shared_flags
from interventions.analysis.defaults import (
    EXACT_SWEEPS,
    MAX_SETS,
    METHODS,
    IdentifyConfig,
    LearnedMaskOptions,
    check_fraction,
)
from modarb_tasks.errors import ModarbError
from modarb_tasks.outdir import check_out, staged


def register(subparsers) -> None:
    defaults = IdentifyConfig()
    parser = subparsers.add_parser(
        "identify",
        parents=[shared_flags(defaults, help={"seed": "seed of the learned mask (default: %(default)s)"})],
        help="rank every attention head's role in modality arbitration (attribution, exact ablation, selective sweep, "
        "learned mask) "
        "and write a spec blocking the top heads",
        description="Score every decoder attention head by its effect on the following-minus-competitor logit "
        "difference of the first answer token, on the shapes validation split or MC²'s analysis half (--data; the "
        "test split / half stays for lm-eval). "
        "Writes identify.json, heads_<method>.png heat-maps and spec_top<percent>.json for hf-modarb.",
    )
    parser.add_argument("--top", type=float, default=defaults.top,
                        help="fraction of heads in the spec (default: %(default)s)")
    parser.add_argument("--method", choices=METHODS, default=defaults.method,
                        help="which ranking makes the spec (default: %(default)s)")
    parser.add_argument("--no-exact", dest="exact", action="store_false",
                        help="skip the exact sweeps, plain and selective (L*H forwards per batch)")
    parser.add_argument("--no-learned", dest="learned", action="store_false", help="skip the learned mask")
    parser.add_argument("--learned-steps", type=int, default=defaults.learned_steps,
                        help="optimisation steps of the learned mask per start (default: %(default)s)")
    parser.add_argument("--exhaustive", action="store_true",
                        help=f"also score every k-head set exactly, the optimum the learned mask is checked against "
                        f"(small models only: at most {MAX_SETS:,} sets)")
    parser.add_argument("--curve-heads", type=int, default=defaults.curve_heads,
                        help="gate-response curves (gate 0..8) for this many top heads of each ranking; 0: none "
                        "(default: %(default)s)")
    parser.add_argument("--n-items", type=int, default=defaults.n_items,
                        help="shapes items; each gives one doc per task kind (default: %(default)s)")
    parser.add_argument("--exact-sweep", choices=EXACT_SWEEPS, default=defaults.exact_sweep,
                        help="the exact sweeps score every head on models of at most 64 heads, else a shortlist: "
                        "the union of attribution's and the learned mask's top heads; 'full': every head "
                        "(default: %(default)s)")
    parser.add_argument("--plan", action="store_true",
                        help="print the work plan (forwards, decoder layer-tokens, estimated H100 minutes per phase) "
                        "from the model's config and processor, load no weights, and exit")
    add_data_arguments(parser)
    parser.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for flags that cannot work, before any model is loaded."""
    try:
        check_fraction(args.top)
    except ModarbError:
        raise ModarbError(f"--top {args.top} must be a fraction in (0, 1), e.g. 0.05 for the top 5% of heads") from None
    skipped = {"ablation": None if args.exact else "--no-exact", "selective": None if args.exact else "--no-exact",
               "learned": None if args.learned else "--no-learned"}
    if skipped.get(args.method):
        raise ModarbError(f"--method {args.method} needs that ranking; drop {skipped[args.method]}")
    for flag, value in (("--learned-steps", args.learned_steps), ("--n-items", args.n_items),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise ModarbError(f"{flag} {value} must be at least 1")
    if args.curve_heads < 0:
        raise ModarbError(f"--curve-heads {args.curve_heads} must be 0 (no curves) or more")


def run(args: argparse.Namespace) -> int:
    from interventions.analysis.identify import run_identify
    from interventions.model.loading import load_model

    from interventions.analysis.data import (
        CONTROL_KINDS,
        FOLLOW_KINDS,
        analysis_docs,
        data_record,
        docs_line,
        resolve_data,
    )
    from interventions.analysis.plan import read_model

    check_args(args)
    if not args.plan:  # a plan writes nothing
        check_out(args.out)
    source = resolve_data(args.data, args.mc2_json, args.mc2_images, uses=[("analysis", args.n_items)])
    model_config, processor = read_model(args.model, args.trust_remote_code)  # bad data: before any weights load
    docs, dropped = analysis_docs(source, model_config, processor.tokenizer, args.n_items,
                                  (*FOLLOW_KINDS, *CONTROL_KINDS))
    print(docs_line(source, docs, dropped))
    if args.plan:
        from interventions.analysis.plan import identify_work, table
        from interventions.model.model_files import check_device

        check_device(args.device)
        print(table(identify_work(args.model, docs, args.batch_size, args.trust_remote_code, fraction=args.top,
                                  exact=args.exact, learned=args.learned, curve_heads=args.curve_heads,
                                  options=LearnedMaskOptions(steps=args.learned_steps), exact_sweep=args.exact_sweep)))
        return 0
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code, config=model_config,
                                  processor=processor)
    with staged(args.out) as out:
        identified = run_identify(model, processor, out, config_from(IdentifyConfig, args), docs=docs,
                                  data=data_record(source, dropped, len(docs)) if source.is_mc2 or dropped else None)
    heads = ", ".join(f"L{l}H{h}" for l, h in identified.spec_heads)
    print(f"identify: wrote {args.out / 'identify.json'}; {args.out / identified.spec_file} blocks {heads} "
          f"({args.method})")
    return 0
