"""Causal attention flow: which attention edges carry modality arbitration, layer by layer.

For an edge source -> target (e.g. Vision -> Instruction: instruction-token queries may not
attend to image-token keys) and a layer l, the edge is knocked out in a window of k layers
centred on l, and the effect is the change in the binary-normalised following probability
P_F = p(F)/(p(F)+p(C)) of the first answer token against the unmodified run. Effects are
averaged over items with a 95% band (mean +- 1.96 standard errors), separately per prompt
layout and instruction side.

Docs are batched (many items per forward) and each batch's unmodified baseline is computed once.
An edge that cannot act in a layout is skipped with a note, not run: one of its groups is
empty there (no system prompt in the standard layout), or every key comes after every query,
which causal attention blocks already (image -> system when the system prompt comes first).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from interventions.analysis.batches import DocBatch, following_scores, iter_batches
from modarb_tasks.errors import ModarbError
from interventions.mechanism.knockout import knockout, layer_window
from interventions.mechanism.locate import locate_heads
from interventions.mechanism.resume import resumable

# edge name -> (key group: where information comes from, query group: where it would go)
EDGES: dict[str, tuple[str, str]] = {
    "vision->instruction": ("image", "instruction"),
    "context->instruction": ("context", "instruction"),
    "vision->context": ("image", "context"),
    "vision->last": ("image", "last"),
    "context->last": ("context", "last"),
    "instruction->last": ("instruction", "last"),
    # positional controls: the constraint (swapped with the instruction in `instruction_after`)
    # and a system prompt take the instruction's place as the receiving group
    "vision->constraint": ("image", "constraint"),
    "context->constraint": ("context", "constraint"),
    "instruction->constraint": ("instruction", "constraint"),
    "vision->system": ("image", "system"),
    "context->system": ("context", "system"),
}
SIDES = ("image", "text")
Z_95 = 1.96
# The window covers about 30% of the depth, as in the knockout literature (k = 9 on 28-32-layer
# models); odd, so it is centred on its layer. On the 6-layer organism that is k = 1: a 3-layer
# window would span half the model and blur shallow against deep layers.
WINDOW_FRACTION = 0.3


class FlowError(ModarbError):
    """Bad flow request (window, edges, docs)."""


def default_window(num_layers: int) -> int:
    """The odd window size nearest WINDOW_FRACTION of the depth (at least 1)."""
    return max(1, 2 * math.floor(WINDOW_FRACTION * num_layers / 2) + 1)


def check_window(k: int, num_layers: int | None = None) -> int:
    if not isinstance(k, int) or k < 1 or (num_layers is not None and k > num_layers):
        limit = f"1..{num_layers}" if num_layers is not None else ">= 1"
        raise FlowError(f"knockout window must be a layer count in {limit}, not {k!r}; pass e.g. --window 1")
    return k


@dataclass(frozen=True)
class Band:
    """Mean over items and its 95% band (mean +- 1.96 SE); band is None with fewer than 2 items."""

    mean: list[float] | float
    low: list[float] | float | None
    high: list[float] | float | None
    n: int

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def band(values: torch.Tensor) -> Band:
    """Band over dim 0 of `values` ([items] or [items, layers])."""
    values = values.double()
    n = values.shape[0]
    mean = values.mean(0)
    if n < 2:
        return Band(mean.tolist(), None, None, n)
    half = Z_95 * values.std(0, correction=1) / math.sqrt(n)
    return Band(mean.tolist(), (mean - half).tolist(), (mean + half).tolist(), n)


@dataclass
class PartFlow:
    """The sweep on one (layout, instruction side): per-item baseline P_F and per-item effects."""

    layout: str
    side: str
    item_ids: list[str]
    baseline: torch.Tensor  # [items] P_F without knockout
    effects: dict[str, torch.Tensor] = field(default_factory=dict)  # edge -> [items, layers] delta P_F
    skipped: dict[str, str] = field(default_factory=dict)  # edge -> why it was not run

    def to_json(self) -> dict:
        return {
            "n": len(self.item_ids),
            "item_ids": self.item_ids,
            "baseline_pf": band(self.baseline).to_json() | {"items": self.baseline.tolist()},
            "edges": {
                edge: band(effect).to_json() | {"items": effect.tolist()} for edge, effect in self.effects.items()
            },
            "skipped": self.skipped,
        }


@dataclass
class FlowResult:
    window: int
    layers: list[int]
    num_layers: int
    parts: list[PartFlow]
    seconds: float

    def part(self, layout: str, side: str) -> PartFlow:
        return next(p for p in self.parts if p.layout == layout and p.side == side)

    def to_json(self) -> dict:
        nested: dict[str, dict] = {}
        for part in self.parts:
            nested.setdefault(part.layout, {})[part.side] = part.to_json()
        return {
            "window": self.window,
            "layers": self.layers,
            "num_layers": self.num_layers,
            "windows": {str(layer): layer_window(layer, self.window, self.num_layers) for layer in self.layers},
            "flow": nested,
        }


def split_docs(docs: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    """Docs by (layout, instruction side), in first-seen order; controls (no side) are refused."""
    parts: dict[tuple[str, str], list[dict]] = {}
    for doc in docs:
        if doc.get("instruction_side") not in SIDES:
            raise FlowError(
                f"doc {doc.get('item_id')!r} has no instruction side (kind {doc.get('kind')!r}); "
                "the flow analysis takes follow_image / follow_text docs"
            )
        parts.setdefault((doc["layout"], doc["instruction_side"]), []).append(doc)
    if not parts:
        raise FlowError("no docs to analyse; give at least one follow_image or follow_text doc")
    return parts


def edge_masks(groups: dict[str, torch.Tensor], edge: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(query mask, key mask) [B, S] of `edge` among a batch's token `groups`."""
    key, query = EDGES[edge]
    return groups[query], groups[key]


def why_inapplicable(batches: Iterable[dict[str, torch.Tensor]], edge: str, layout: str) -> str | None:
    """Why `edge` cannot act in these batches' token groups (empty group, keys after queries), or None."""
    key_name, query_name = EDGES[edge]
    for groups in batches:
        query, key = edge_masks(groups, edge)
        for name, mask in ((query_name, query), (key_name, key)):
            if not mask.any(1).all():
                return f"token group {name!r} is empty in the {layout} layout"
        positions = torch.arange(query.shape[1], device=query.device)
        first_key = torch.where(key, positions, query.shape[1]).amin(1)
        last_query = torch.where(query, positions, -1).amax(1)
        if not (first_key <= last_query).all():
            return (
                f"{key_name!r} comes after {query_name!r} in the {layout} layout: causal attention already blocks it"
            )
    return None


def first_position(mask: torch.Tensor) -> int:
    """The first column any row of a [B, S] bool mask holds (S when it is empty): a knockout of queries
    in `mask` changes no position before it."""
    columns = mask.any(0).nonzero()
    return int(columns[0]) if len(columns) else mask.shape[1]


def _probability(logits: torch.Tensor, batch: DocBatch) -> torch.Tensor:
    """P_F per row of `batch` from its last-position logits, in float64 on the CPU for the item statistics."""
    return following_scores(logits, batch)[1].double().cpu()


@torch.no_grad()
def sweep_batch(
    model, batch: DocBatch, edges: Sequence[str], windows: Sequence[Sequence[int]], on_forward=lambda: None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(baseline P_F [B], edge -> change in P_F [B, windows]) for one batch: 1 + edges x windows forwards,
    each knockout's resumed from its window's first layer and its receiving group's first position
    (`resume.resumable`: the positions before it are unchanged)."""
    firsts = {edge: first_position(edge_masks(batch.groups, edge)[0]) for edge in edges}
    clean = resumable(model, batch.inputs, {min(layers) for layers in windows}, positions=firsts.values())
    baseline = _probability(clean.logits, batch)
    on_forward()
    effects = {}
    for edge in edges:
        per_window = []
        for layers in windows:
            with knockout(model, [edge_masks(batch.groups, edge)], layers):
                per_window.append(_probability(clean.last_logits(min(layers), firsts[edge]), batch) - baseline)
            on_forward()
        effects[edge] = torch.stack(per_window, 1)
    return baseline, effects


def flow_sweep(
    model,
    processor,
    docs: Sequence[dict],
    edges: Sequence[str] = tuple(EDGES),
    window: int | None = None,
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> FlowResult:
    """Knock out each edge around each layer and record the change in P_F per item.

    `window` defaults to default_window(num_layers); `layers` (window centres) to all layers.
    """
    unknown = [edge for edge in edges if edge not in EDGES]
    if unknown:
        raise FlowError(f"unknown flow edge {unknown[0]!r}; choose from {', '.join(EDGES)}")
    if batch_size < 1:
        raise FlowError(f"batch size must be >= 1, not {batch_size}")
    num_layers = locate_heads(model).num_layers
    k = default_window(num_layers) if window is None else check_window(window, num_layers)
    centres = list(range(num_layers)) if layers is None else list(layers)
    windows = [layer_window(centre, k, num_layers) for centre in centres]
    start = time.perf_counter()

    plans = []
    for (layout, side), part_docs in split_docs(docs).items():
        batches = list(iter_batches(model, processor, part_docs, batch_size))
        reasons = {edge: why_inapplicable([batch.groups for batch in batches], edge, layout) for edge in edges}
        runnable = [edge for edge in edges if reasons[edge] is None]
        skipped = {edge: reason for edge, reason in reasons.items() if reason is not None}
        plans.append((layout, side, part_docs, batches, runnable, skipped))
    total = sum(len(batches) * (1 + len(runnable) * len(windows)) for _, _, _, batches, runnable, _ in plans)

    parts = []
    with tqdm(total=total, desc="flow", unit="forward", disable=not progress) as bar:
        for layout, side, part_docs, batches, runnable, skipped in plans:
            baselines, effects = [], {edge: [] for edge in runnable}
            for batch in batches:
                baseline, batch_effects = sweep_batch(model, batch, runnable, windows, on_forward=bar.update)
                baselines.append(baseline)
                for edge, effect in batch_effects.items():
                    effects[edge].append(effect)
            parts.append(
                PartFlow(
                    layout=layout,
                    side=side,
                    item_ids=[doc["item_id"] for doc in part_docs],
                    baseline=torch.cat(baselines),
                    effects={edge: torch.cat(chunks) for edge, chunks in effects.items()},
                    skipped=skipped,
                )
            )
    return FlowResult(
        window=k, layers=centres, num_layers=num_layers, parts=parts, seconds=time.perf_counter() - start
    )
