"""The flow analysis as one call: sweep, logit lens and contributions on one model, written as
flow.json + PNG figures (`modarb flow` and `modarb reproduce` both run it)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
from interventions.analysis.defaults import FlowConfig
from modarb_tasks.errors import ModarbError
from modarb_tasks.files import write_json
from modarb_tasks.outdir import OutputFolder

if TYPE_CHECKING:
    from interventions.analysis.flow import FlowResult
    from interventions.analysis.lens import LensResult

SCHEMA_VERSION = "modarb.flow/v1"


def check_counts(window: int | None, n_items: int, batch_size: int) -> None:
    """One-line errors for bad counts, before any model is loaded."""
    if window is not None and window < 1:
        raise ModarbError(f"--window {window} must be a number of layers >= 1, e.g. --window 1")
    for flag, value in (("--n-items", n_items), ("--batch-size", batch_size)):
        if value < 1:
            raise ModarbError(f"{flag} {value} must be at least 1")


def command_line(config: FlowConfig, out: Path, window: int) -> str:
    """The command that repeats the run, every option explicit (`window`: the one it ran with)."""
    parts = ["modarb flow"] + ([f"--model {config.model}"] if config.model else [])
    parts += [f"--out {out}", f"--window {window}", f"--n-items {config.n_items}", f"--batch-size {config.batch_size}",
              f"--split {config.split}", f"--layouts {','.join(config.layouts)}"]
    return " ".join(parts)


@dataclass(frozen=True)
class FlowRun:
    """One flow analysis: the sweep, the lens, what ran and the figures it drew; flow.json is `to_json()`."""

    config: FlowConfig
    sweep: FlowResult
    lens: LensResult
    command: str
    data: dict[str, Any] | None  # the data record (MC², or dropped docs); None: the shapes split as named
    figures: tuple[str, ...]
    seconds: float  # the whole run, sweep included

    @property
    def window(self) -> int:
        return self.sweep.window

    def to_json(self) -> dict[str, Any]:
        config = self.config
        return {
            "schema": SCHEMA_VERSION,
            "model": config.model or "modarb-organism",
            "command": self.command,
            "split": self.data["analysis_half"] if self.data else config.split,
            **({"data": self.data} if self.data else {}),
            "layouts": list(config.layouts),
            "n_items": config.n_items,
            "batch_size": config.batch_size,
            "metric": "delta P_F = P_F(knockout) - P_F(none); P_F = p(F)/(p(F)+p(C)) over the first answer token",
            "band": "mean +- 1.96 * standard error over items",
            **self.sweep.to_json(),
            **self.lens.to_json(),
            "figures": list(self.figures),
            "seconds": {"sweep": round(self.sweep.seconds, 3), "total": round(self.seconds, 3)},
        }


def run_flow(
    model,
    processor,
    out: Path | OutputFolder,
    config: FlowConfig,
    *,
    progress: bool = True,
    docs: Sequence[dict] | None = None,
    data: dict[str, Any] | None = None,
) -> FlowRun:
    """Run the sweep, the lens and the contributions; write out/flow.json and out/flow_*.png; return the run.

    `out`: a folder, or a staged `OutputFolder` (its command then names the final folder).
    `docs`: follow docs to use instead of the shapes split (e.g. MC²'s analysis half), described by `data`."""
    from interventions.analysis import flow_plots
    from interventions.analysis.flow import flow_sweep
    from interventions.analysis.lens import logit_lens

    check_counts(config.window, config.n_items, config.batch_size)
    start = time.perf_counter()
    docs = shapes_docs(config.n_items, FOLLOW_KINDS, config.layouts, config.split) if docs is None else list(docs)
    sweep = flow_sweep(model, processor, docs, window=config.window, batch_size=config.batch_size, progress=progress)
    lens = logit_lens(model, processor, docs, batch_size=config.batch_size, progress=progress)
    out = OutputFolder.of(out)
    out.work.mkdir(parents=True, exist_ok=True)
    figures = []
    for layout in config.layouts:
        figures.append(flow_plots.plot_flow(sweep, layout, out.work / f"flow_{layout}.png").name)
        figures.append(flow_plots.plot_lens(lens, layout, out.work / f"flow_lens_{layout}.png").name)
        figures.append(flow_plots.plot_contributions(lens, layout, out.work / f"flow_contributions_{layout}.png").name)
    run = FlowRun(config, sweep, lens, command_line(config, out.final, sweep.window) + (data or {}).get("flags", ""),
                  data, tuple(figures), time.perf_counter() - start)
    write_json(out.work / "flow.json", run.to_json(), indent=1)
    return run
