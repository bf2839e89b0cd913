"""How a head's effect grows with its gate: the mean logit difference with one head scaled by g.

Attribution reads the tangent of this curve at g = 1, the exact sweep its value at g = 0 (block),
and amplification its values above 1. For most heads the three agree. A *saturated* head's curve
is flat near 1 and falls steeply further down: the tangent sees nothing although blocking the head
changes everything, and scaling it up cannot help either. These curves are the evidence for why
attribution and the sweep disagree on a head, and for how far amplification can go.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from interventions.analysis.batches import DocBatch, following_scores
from modarb_tasks.errors import ModarbError
from modarb_tasks.files import write_png
from interventions.mechanism.heads import Head, scale_heads
from interventions.mechanism.resume import resumable

GATES = (0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0)
SIDES = ("follow_image", "follow_text")


def _check_gates(gates: Sequence[float]) -> tuple[float, ...]:
    gates = tuple(float(g) for g in gates)
    if 0.0 not in gates or 1.0 not in gates or list(gates) != sorted(set(gates)):
        raise ModarbError(f"gates {gates} must be increasing, distinct, and include 0 (block) and 1 (the model)")
    return gates


@torch.no_grad()
def gate_response(
    model: nn.Module,
    batches: Sequence[DocBatch],
    heads: Sequence[Head],
    gates: Sequence[float] = GATES,
    progress: bool = True,
) -> list[dict]:
    """Per head, the mean logit difference log p(F) - log p(C) at each gate, over all docs and per side.

    Per batch, the unchanged model's forward (gate 1, shared) and one forward per head and other gate,
    resumed at the head's layer (`resume.resumable`: the layers below it are the unchanged model's).
    """
    gates = _check_gates(gates)
    kinds = [doc.get("kind") for batch in batches for doc in batch.docs]
    masks = {"mean": torch.ones(len(kinds), dtype=torch.bool)} | {
        side: torch.tensor([kind == side for kind in kinds]) for side in SIDES if side in kinds
    }
    scaled = [(tuple(head), gate) for head in heads for gate in gates if gate != 1.0]
    columns: dict = {(tuple(head), 1.0): [] for head in heads} | {setting: [] for setting in scaled}
    with tqdm(total=len(batches) * len(scaled), desc="gate response", unit="gate", disable=not progress) as bar:
        for batch in batches:
            clean = resumable(model, batch.inputs, {layer for (layer, _), _ in scaled})
            base = following_scores(clean.logits, batch)[0].double().cpu()
            for head in heads:
                columns[tuple(head), 1.0].append(base)
            for head, gate in scaled:
                with scale_heads(model, {head: gate}):
                    columns[head, gate].append(following_scores(clean.last_logits(head[0]), batch)[0].double().cpu())
                bar.update()
    curves = []
    for head in heads:
        values = torch.stack([torch.cat(columns[tuple(head), gate]) for gate in gates])  # [gates, docs]
        curves.append({"head": [int(head[0]), int(head[1])]} | {
            name: [round(float(v), 5) for v in values[:, mask].mean(dim=1)] for name, mask in masks.items()
        })
    return curves


def describe(curve: dict, gates: Sequence[float], attribution_estimate: float | None) -> dict:
    """The numbers that say how linear a head's curve is (all drops are of the mean difference).

    exact_drop: value at 1 minus value at 0 (what the sweep measures); first_quarter_share: the
    part of that drop already seen at gate 0.75 (a straight line gives 0.25, a saturated head ~0);
    amplify_gain: value at the largest gate minus value at 1, per side.
    """
    gates = list(gates)
    one, zero, quarter = gates.index(1.0), gates.index(0.0), gates.index(0.75) if 0.75 in gates else None
    mean = curve["mean"]
    exact = mean[one] - mean[zero]
    share = (mean[one] - mean[quarter]) / exact if quarter is not None and abs(exact) > 1e-9 else None
    return {
        "exact_drop": round(exact, 5),
        "attribution_estimate": None if attribution_estimate is None else round(attribution_estimate, 5),
        "first_quarter_share": None if share is None else round(share, 3),
        "amplify_gain": {side: round(curve[side][-1] - curve[side][one], 5)
                         for side in ("mean", *SIDES) if side in curve},
    }


def plot_gate_response(curves: Sequence[dict], gates: Sequence[float], path: Path,
                       slopes: dict[tuple[int, int], float] | None = None, title: str = "") -> Path:
    """One panel per head: the measured curve (all docs and per side) and attribution's tangent at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.2 * rows), squeeze=False, sharey=True)
    one = list(gates).index(1.0)
    for ax, curve in zip(axes.flat, curves):
        layer, head = curve["head"]
        ax.plot(gates, curve["mean"], "o-", color="black", label="all follow docs")
        for side, colour in zip(SIDES, ("tab:blue", "tab:orange")):
            if side in curve:
                ax.plot(gates, curve[side], ".-", color=colour, linewidth=1, alpha=0.8, label=side.replace("_", "-"))
        slope = (slopes or {}).get((layer, head))
        if slope is not None:
            xs = [0.0, min(2.0, gates[-1])]
            ax.plot(xs, [curve["mean"][one] + slope * (x - 1.0) for x in xs], "--", color="tab:red",
                    label="attribution (tangent at 1)")
        ax.axvline(1.0, color="gray", linewidth=0.8)
        ax.axhline(0.0, color="gray", linewidth=0.5)
        ax.set_xscale("symlog", linthresh=1.0, linscale=1.5)
        ax.set_xlim(gates[0] - 0.05, gates[-1] * 1.1)
        ax.set_xticks(list(gates))
        ax.set_xticklabels([f"{g:g}" for g in gates], fontsize=7)
        ax.set_title(f"L{layer}H{head}", fontsize=10)
        ax.set_xlabel("gate (0 = blocked, 1 = model, >1 = amplified)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("mean log p(F) - log p(C)")
    axes[0][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return write_png(fig, Path(path))
