"""Layer x head heat-map of one ranking's scores, with its top-k heads boxed.

Scores are signed (a head can support or oppose following), so the colour scale is diverging and
centred on 0: the eye finds the heads that matter in either direction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from modarb_tasks.files import write_png  # noqa: E402


def plot_head_scores(
    scores: torch.Tensor, path: str | os.PathLike, *, title: str, label: str, boxed: Sequence[tuple[int, int]] = ()
) -> Path:
    """Write a PNG of `scores` [layers, heads] to `path` (atomically); heads in `boxed` get a frame."""
    values = scores.detach().double().cpu().numpy()
    layers, heads = values.shape
    limit = float(np.nanmax(abs(values))) if not np.isnan(values).all() else 1.0  # NaN: not scored
    limit = limit or 1.0
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 + 0.45 * min(heads, 32)), max(3.0, 1.2 + 0.4 * min(layers, 32))), constrained_layout=True)
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    for layer, head in boxed:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads) if heads <= 32 else range(0, heads, 4))
    ax.set_yticks(range(layers) if layers <= 32 else range(0, layers, 4))
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=label)
    return write_png(fig, Path(path))
