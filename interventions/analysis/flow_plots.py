"""Figures of the flow analysis in the paper's style: one panel per instruction side.

- flow: a curve per edge over the layers (window centres), y = change in P_F, 95% band shaded;
- lens: the follow-minus-competitor logit difference read after each layer, at the last
  position and over the instruction tokens;
- contributions: each layer's attention and MLP direct contribution to that difference (bars).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from interventions.analysis.flow import EDGES, SIDES, FlowResult, band  # noqa: E402
from interventions.analysis.lens import LensResult  # noqa: E402
from modarb_tasks.files import write_png  # noqa: E402

SIDE_TITLES = {"image": "follow image", "text": "follow text"}
_PALETTE = plt.get_cmap("tab20").colors
EDGE_COLORS = dict(zip(EDGES, _PALETTE[::2] + _PALETTE[1::2]))  # dark shades first


def _panels(title: str):
    figure, axes = plt.subplots(1, len(SIDES), figsize=(5.2 * len(SIDES), 3.8), sharey=True, squeeze=False)
    figure.suptitle(title)
    return figure, axes[0]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    return write_png(figure, path)


def _shade(axis, x, summary, color, label, marker="o") -> None:
    axis.plot(x, summary.mean, marker=marker, markersize=3, color=color, label=label)
    if summary.low is not None:
        axis.fill_between(x, summary.low, summary.high, color=color, alpha=0.2, linewidth=0)


def plot_flow(result: FlowResult, layout: str, path: Path) -> Path:
    """ΔP_F per edge over window centres, one panel per side, for one prompt layout."""
    figure, axes = _panels(f"Attention knockout ({layout} layout, window {result.window})")
    for axis, side in zip(axes, SIDES):
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_title(SIDE_TITLES[side])
        axis.set_xlabel("layer (window centre)")
        parts = [p for p in result.parts if p.layout == layout and p.side == side]
        for part in parts:
            for edge, effect in part.effects.items():
                _shade(axis, result.layers, band(effect), EDGE_COLORS[edge], edge)
        if parts and parts[0].effects:
            axis.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("ΔP_F (knockout − none)")
    return _save(figure, path)


def plot_lens(lens: LensResult, layout: str, path: Path) -> Path:
    """Logit lens of follow − competitor per layer, at the last position and the instruction tokens."""
    figure, axes = _panels(f"Logit lens ({layout} layout)")
    layers = list(range(lens.num_layers))
    for axis, side in zip(axes, SIDES):
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_title(SIDE_TITLES[side])
        axis.set_xlabel("layer")
        for part in (p for p in lens.parts if p.layout == layout and p.side == side):
            _shade(axis, layers, band(part.lens_last), "tab:blue", "last position")
            _shade(axis, layers, band(part.lens_instruction), "tab:orange", "instruction tokens", marker="s")
            axis.legend(fontsize=8)
    axes[0].set_ylabel("log p(F) − log p(C)")
    return _save(figure, path)


def plot_contributions(lens: LensResult, layout: str, path: Path) -> Path:
    """Per-layer attention vs MLP direct contribution to the follow − competitor logit difference."""
    figure, axes = _panels(f"Direct contribution per layer ({layout} layout, frozen final norm)")
    layers = list(range(lens.num_layers))
    width = 0.4
    for axis, side in zip(axes, SIDES):
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_title(SIDE_TITLES[side])
        axis.set_xlabel("layer")
        for part in (p for p in lens.parts if p.layout == layout and p.side == side):
            for offset, name, color in ((-width / 2, "attention", "tab:blue"), (width / 2, "mlp", "tab:red")):
                summary = band(getattr(part, name))
                errors = None
                if summary.low is not None:
                    errors = [[m - lo for m, lo in zip(summary.mean, summary.low)],
                              [hi - m for m, hi in zip(summary.mean, summary.high)]]
                axis.bar([x + offset for x in layers], summary.mean, width, yerr=errors, color=color,
                         label=name.upper() if name == "mlp" else name, capsize=2)
            axis.set_xticks(layers)
            axis.legend(fontsize=8)
    axes[0].set_ylabel("contribution to logit difference")
    return _save(figure, path)
