"""Comparing two runs on the same items: discordant counts, McNemar's exact test, Newcombe's
interval for the paired difference and the minimum detectable drop.

Why paired: two runs scored on the same items share each item's difficulty, so their difference
varies only through the items on which they disagree. Two runs that disagree on 3 of 200 items
and two that disagree on 60 can have the same means; only the paired view tells them apart.

Outcomes are 0/1 per item (follow, or correct). For runs `before` and `after` on n items:
b = items 1 before and 0 after (lost), c = items 0 before and 1 after (gained), and the
difference after − before is (c − b) / n.

The interval is Newcombe's (1998) method 10: a hybrid of the two margins' Wilson score intervals,
combined with the phi correlation of the 2×2 table. It needs no resampling (so no seed), stays
inside [−1, 1], and is not degenerate when b = c = 0 or an outcome is constant, where the Wald
interval collapses to a point. `z` sets its level (1.96: 95%), as it sets the unpaired rule's.

No torch, no lm-eval: the base layer, shared by `modarb check`, the board and reproduce's report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import binomtest, norm

from modarb_tasks.errors import ModarbError

DEFAULT_Z = 1.96
POWER = 0.8


@dataclass(frozen=True)
class Paired:
    """Two runs' outcomes on the same n items: b lost, c gained, both = 1 on both runs."""

    n: int
    b: int
    c: int
    both: int

    @property
    def before(self) -> float:
        return (self.both + self.b) / self.n

    @property
    def after(self) -> float:
        return (self.both + self.c) / self.n

    @property
    def delta(self) -> float:
        """after − before."""
        return (self.c - self.b) / self.n

    @property
    def p_value(self) -> float:
        return mcnemar_p(self.b, self.c)

    def interval(self, z: float = DEFAULT_Z) -> tuple[float, float]:
        return newcombe_interval(self.n, self.b, self.c, self.both, z)

    @property
    def spread(self) -> float:
        """Per-item standard deviation of the difference: sqrt(discordant share − delta²)."""
        return math.sqrt(max((self.b + self.c) / self.n - self.delta**2, 0.0))


def pair(before: Sequence[int], after: Sequence[int]) -> Paired:
    """Count the outcomes of two runs on the same items (the same order)."""
    if len(before) != len(after) or not before:
        raise ModarbError(f"paired outcomes need the same items on both sides (got {len(before)} and {len(after)})")
    if any(value not in (0, 1) for value in (*before, *after)):
        raise ModarbError("paired outcomes must be 0 or 1 per item")
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    both = sum(1 for x, y in zip(before, after) if x and y)
    return Paired(len(before), b, c, both)


def mcnemar_p(b: int, c: int) -> float:
    """Exact McNemar p-value (two-sided): b of the b + c discordant items under Binomial(b + c, 1/2).
    1 when the runs never disagree."""
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def wilson(successes: int, n: int, z: float = DEFAULT_Z) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def newcombe_interval(n: int, b: int, c: int, both: int, z: float = DEFAULT_Z) -> tuple[float, float]:
    """Newcombe's method-10 interval for after − before, (c − b)/n: see the module docstring.

    Margins: after = (both + c)/n with Wilson (l1, u1); before = (both + b)/n with (l2, u2);
    phi = (both·neither − c·b) / sqrt of the four margin totals' product (0 when one is 0), with
    Newcombe's continuity correction (n/2 off a positive numerator), so that b = c = 0 does not
    give a zero-width interval.
    """
    neither = n - b - c - both
    p1, p2 = (both + c) / n, (both + b) / n
    (l1, u1), (l2, u2) = wilson(both + c, n, z), wilson(both + b, n, z)
    margins = (both + c) * (n - both - c) * (both + b) * (n - both - b)
    agreement = both * neither - b * c
    if agreement > 0:
        agreement = max(agreement - n / 2, 0.0)
    phi = agreement / math.sqrt(margins) if margins else 0.0
    lower = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    upper = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    delta = p1 - p2
    return max(delta - lower, -1.0), min(delta + upper, 1.0)


def min_detectable_drop(n: int, spread: float, tolerance: float = 0.0, z: float = DEFAULT_Z,
                        power: float = POWER) -> float:
    """The smallest true drop the regression rule (drop's lower bound > tolerance) flags with
    probability `power`, in the normal approximation: tolerance + (z + Φ⁻¹(power)) · spread / sqrt(n).

    `spread` is the per-item standard deviation of the difference: the observed one of a paired
    comparison (Paired.spread), or sqrt(p1(1−p1) + p2(1−p2)) for two independent runs. A plug-in
    figure: runs that never disagreed have spread 0, and the figure is then only the tolerance.
    """
    return tolerance + (z + float(norm.ppf(power))) * spread / math.sqrt(n)

