"""`modarb flow`: the causal attention analysis on one model, written as flow.json + PNG figures.

flow.json holds every number: per layout, instruction side, edge and layer the mean change in
P_F with its 95% band, n and the per-item values; each side's baseline P_F; the logit lens and
the attention/MLP contributions; the window; the item ids used; the timing; the command that
repeats the run. It is written to a temporary name and renamed, after the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interventions.analysis.data import FOLLOW_KINDS, add_data_arguments
from interventions.cli.arguments import config_from, shared_flags
from interventions.analysis.defaults import FlowConfig
from interventions.analysis.flow_run import check_counts, run_flow
from modarb_tasks.errors import ModarbError
from modarb_tasks.outdir import check_out, staged
from modarb_tasks.shapes.scenes import SPLITS


def register(subparsers) -> None:
    defaults = FlowConfig()
    parser = subparsers.add_parser(
        "flow",
        parents=[shared_flags(defaults)],
        help="trace modality arbitration: attention knockout per edge and layer, logit lens, attention vs MLP",
        description="For each attention edge (Vision->Instruction, Context->Instruction, Vision->Context, "
        "Vision->Last, Context->Last, Instruction->Last, and ->Constraint / ->System in the positional-control "
        "layouts) and each layer, knock the edge out in a window of layers centred there and record the change in "
        "P_F = p(F)/(p(F)+p(C)) of the first answer token, per instruction side. Also the logit lens and each "
        "layer's attention and MLP contribution to the follow-minus-competitor logit difference.",
    )
    parser.add_argument("--window", type=int, default=defaults.window,
                        help="knockout window in layers (default: the odd number nearest 30%% of the depth; 1 on the "
                        "6-layer organism)")
    parser.add_argument("--n-items", type=int, default=defaults.n_items,
                        help="items (shapes, or MC²'s analysis half) per layout and instruction side "
                        "(default: %(default)s)")
    parser.add_argument("--split", default=defaults.split, choices=SPLITS,
                        help="shapes split (default: %(default)s); MC² data always uses its analysis half")
    parser.add_argument("--layouts", default=",".join(defaults.layouts),
                        help="prompt layouts, comma-separated (default: %(default)s)")
    parser.add_argument("--plan", action="store_true",
                        help="print the work plan (forwards, decoder layer-tokens, estimated H100 minutes per phase) "
                        "from the model's config and processor, load no weights, and exit")
    add_data_arguments(parser)
    parser.set_defaults(func=_run)


def parse_layouts(text: str) -> tuple[str, ...]:
    from modarb_tasks.prompts import LAYOUTS

    layouts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown or not layouts:
        raise ModarbError(f"unknown layout {(unknown or [text])[0]!r} in --layouts; choose from {', '.join(LAYOUTS)}")
    return layouts


def _run(args: argparse.Namespace) -> int:
    from interventions.analysis.data import analysis_docs, data_record, docs_line, resolve_data
    from interventions.analysis.plan import read_model

    layouts = parse_layouts(args.layouts)
    check_counts(args.window, args.n_items, args.batch_size)
    if not args.plan:  # a plan writes nothing
        check_out(args.out)
    source = resolve_data(args.data, args.mc2_json, args.mc2_images, uses=[("analysis", args.n_items)])
    model_config, processor = read_model(args.model, args.trust_remote_code)  # bad data: before any weights load
    docs, dropped = analysis_docs(source, model_config, processor.tokenizer, args.n_items, FOLLOW_KINDS, layouts,
                                  half=args.split)
    print(docs_line(source, docs, dropped))
    if args.plan:
        from interventions.analysis.plan import flow_work, table
        from interventions.model.model_files import check_device

        check_device(args.device)
        print(table(flow_work(args.model, docs, args.batch_size, args.trust_remote_code, args.window)))
        return 0
    from interventions.model.loading import load_model

    model, processor = load_model(args.model, device=args.device, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code, config=model_config,
                                  processor=processor)
    with staged(args.out) as out:
        flow = run_flow(model, processor, out, config_from(FlowConfig, args, layouts=layouts), docs=docs,
                        data=data_record(source, dropped, len(docs)) if source.is_mc2 or dropped else None)
    print(f"flow: wrote {Path(args.out) / 'flow.json'} and {len(flow.figures)} figures "
          f"(window {flow.window}, {flow.seconds:.0f} s)")
    return 0
