"""`modarb flow`: the causal attention analysis on one model, written as flow.json + PNG figures.

flow.json holds every number: per layout, instruction side, edge and layer the mean change in
P_F with its 95% band, n and the per-item values; each side's baseline P_F; the logit lens and
the attention/MLP contributions; the window; the item ids used; the timing; the command that
repeats the run. It is written to a temporary name and renamed, after the figures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interventions.analysis.data import add_data_arguments
from modarb_tasks.errors import ModarbError
from modarb_tasks.files import write_json
from modarb_tasks.outdir import OutputFolder, check_out, staged
from modarb_tasks.shapes.scenes import SPLITS

SCHEMA_VERSION = "modarb.flow/v1"
DEFAULT_LAYOUTS = ("standard", "instruction_after", "system_prompt")
FOLLOW_KINDS = ("follow_image", "follow_text")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "flow",
        help="trace modality arbitration: attention knockout per edge and layer, logit lens, attention vs MLP",
        description="For each attention edge (Vision->Instruction, Context->Instruction, Vision->Context, "
        "Vision->Last, Context->Last, Instruction->Last, and ->Constraint / ->System in the positional-control "
        "layouts) and each layer, knock the edge out in a window of layers centred there and record the change in "
        "P_F = p(F)/(p(F)+p(C)) of the first answer token, per instruction side. Also the logit lens and each "
        "layer's attention and MLP contribution to the follow-minus-competitor logit difference.",
    )
    parser.add_argument("--model", default=None, help="model folder or cached hub id (default: the bundled organism)")
    parser.add_argument("--out", type=Path, default=Path("reports/flow"), help="output folder (default: %(default)s)")
    parser.add_argument("--window", type=int, default=None,
                        help="knockout window in layers (default: the odd number nearest 30%% of the depth; 1 on the "
                        "6-layer organism)")
    parser.add_argument("--n-items", type=int, default=32,
                        help="items (shapes, or MC²'s analysis half) per layout and instruction side "
                        "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="docs per forward (default: %(default)s)")
    parser.add_argument("--split", default="validation", choices=SPLITS,
                        help="shapes split (default: %(default)s); MC² data always uses its analysis half")
    parser.add_argument("--layouts", default=",".join(DEFAULT_LAYOUTS),
                        help="prompt layouts, comma-separated (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--plan", action="store_true",
                        help="print the work plan (forwards, decoder layer-tokens, estimated H100 minutes per phase) "
                        "from the model's config and processor, load no weights, and exit")
    add_data_arguments(parser)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model folder's own Python code (needed by some families; off by default: it runs code from the folder)")
    parser.set_defaults(func=_run)


def parse_layouts(text: str) -> tuple[str, ...]:
    from modarb_tasks.prompts import LAYOUTS

    layouts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown or not layouts:
        raise ModarbError(f"unknown layout {(unknown or [text])[0]!r} in --layouts; choose from {', '.join(LAYOUTS)}")
    return layouts


def check_counts(window: int | None, n_items: int, batch_size: int) -> None:
    """One-line errors for bad counts, before any model is loaded."""
    if window is not None and window < 1:
        raise ModarbError(f"--window {window} must be a number of layers >= 1, e.g. --window 1")
    for flag, value in (("--n-items", n_items), ("--batch-size", batch_size)):
        if value < 1:
            raise ModarbError(f"{flag} {value} must be at least 1")


def follow_docs(n_items: int, split: str, layouts: Sequence[str]) -> list[dict]:
    """follow_image and follow_text docs of the first `n_items` shapes items, in each layout."""
    from modarb_tasks.docs import to_doc
    from modarb_tasks.shapes import make_items

    items = make_items(split, n_items)
    return [to_doc(item, kind, layout) for layout in layouts for kind in FOLLOW_KINDS for item in items]


def command_line(model: str | None, out: Path, window: int, n_items: int, batch_size: int, split: str,
                 layouts: Sequence[str]) -> str:
    """The command that repeats the run, every option explicit."""
    parts = ["modarb flow"] + ([f"--model {model}"] if model else [])
    parts += [f"--out {out}", f"--window {window}", f"--n-items {n_items}", f"--batch-size {batch_size}",
              f"--split {split}", f"--layouts {','.join(layouts)}"]
    return " ".join(parts)


def run_flow(
    model,
    processor,
    out: Path | OutputFolder,
    *,
    n_items: int = 32,
    window: int | None = None,
    batch_size: int = 32,
    split: str = "validation",
    layouts: Sequence[str] = DEFAULT_LAYOUTS,
    model_name: str | None = None,
    progress: bool = True,
    docs: Sequence[dict] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the sweep, the lens and the contributions; write out/flow.json and out/flow_*.png; return the JSON.

    `out`: a folder, or a staged `OutputFolder` (its command then names the final folder).
    `docs`: follow docs to use instead of the shapes `split` (e.g. MC²'s analysis half), described by `data`."""
    from interventions.analysis import flow_plots
    from interventions.analysis.flow import flow_sweep
    from interventions.analysis.lens import logit_lens

    check_counts(window, n_items, batch_size)
    start = time.perf_counter()
    docs = follow_docs(n_items, split, layouts) if docs is None else list(docs)
    sweep = flow_sweep(model, processor, docs, window=window, batch_size=batch_size, progress=progress)
    lens = logit_lens(model, processor, docs, batch_size=batch_size, progress=progress)
    out = OutputFolder.of(out)
    out.work.mkdir(parents=True, exist_ok=True)
    figures = []
    for layout in layouts:
        figures.append(flow_plots.plot_flow(sweep, layout, out.work / f"flow_{layout}.png").name)
        figures.append(flow_plots.plot_lens(lens, layout, out.work / f"flow_lens_{layout}.png").name)
        figures.append(flow_plots.plot_contributions(lens, layout, out.work / f"flow_contributions_{layout}.png").name)
    document = {
        "schema": SCHEMA_VERSION,
        "model": model_name or "modarb-organism",
        "command": command_line(model_name, out.final, sweep.window, n_items, batch_size, split, layouts)
        + (data or {}).get("flags", ""),
        "split": data["analysis_half"] if data else split,
        **({"data": data} if data else {}),
        "layouts": list(layouts),
        "n_items": n_items,
        "batch_size": batch_size,
        "metric": "delta P_F = P_F(knockout) - P_F(none); P_F = p(F)/(p(F)+p(C)) over the first answer token",
        "band": "mean +- 1.96 * standard error over items",
        **sweep.to_json(),
        **lens.to_json(),
        "figures": figures,
        "seconds": {"sweep": round(sweep.seconds, 3), "total": round(time.perf_counter() - start, 3)},
    }
    write_json(out.work / "flow.json", document, indent=1)
    return document


def _run(args: argparse.Namespace) -> int:
    from interventions.analysis.data import data_record, docs_line, prepare_docs, resolve_data

    layouts = parse_layouts(args.layouts)
    check_counts(args.window, args.n_items, args.batch_size)
    if not args.plan:  # a plan writes nothing
        check_out(args.out)
    source = resolve_data(args.data, args.mc2_json, args.mc2_images, uses=[("analysis", args.n_items)])
    docs, dropped = prepare_docs(source, args.model, args.n_items, FOLLOW_KINDS, layouts, half=args.split,
                                 trust_remote_code=args.trust_remote_code)
    print(docs_line(source, docs, dropped))
    if args.plan:
        from interventions.analysis.plan import flow_work, table
        from interventions.model.model_files import check_device

        check_device(args.device)
        print(table(flow_work(args.model, docs, args.batch_size, args.trust_remote_code)))
        return 0
    from interventions.model.loading import load_model

    model, processor = load_model(args.model, device=args.device, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code)
    with staged(args.out) as out:
        document = run_flow(model, processor, out, n_items=args.n_items, window=args.window,
                            batch_size=args.batch_size, split=args.split, layouts=layouts, model_name=args.model,
                            docs=docs,
                            data=data_record(source, dropped, len(docs)) if source.is_mc2 or dropped else None)
    print(f"flow: wrote {Path(args.out) / 'flow.json'} and {len(document['figures'])} figures "
          f"(window {document['window']}, {document['seconds']['total']:.0f} s)")
    return 0
