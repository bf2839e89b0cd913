"""The flow analysis as one call: sweep, logit lens and contributions on one model, written as
flow.json + PNG figures (`modarb flow` and `modarb reproduce` both run it)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
from modarb_tasks.errors import ModarbError
from modarb_tasks.files import write_json
from modarb_tasks.outdir import OutputFolder

SCHEMA_VERSION = "modarb.flow/v1"
DEFAULT_LAYOUTS = ("standard", "instruction_after", "system_prompt")


def check_counts(window: int | None, n_items: int, batch_size: int) -> None:
    """One-line errors for bad counts, before any model is loaded."""
    if window is not None and window < 1:
        raise ModarbError(f"--window {window} must be a number of layers >= 1, e.g. --window 1")
    for flag, value in (("--n-items", n_items), ("--batch-size", batch_size)):
        if value < 1:
            raise ModarbError(f"{flag} {value} must be at least 1")


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
    docs = shapes_docs(n_items, FOLLOW_KINDS, layouts, split) if docs is None else list(docs)
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
