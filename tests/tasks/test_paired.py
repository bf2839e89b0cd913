"""modarb_tasks/paired.py: McNemar's exact p, Newcombe's paired interval and the minimum detectable drop,
against hand-computed numbers and seeded simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from modarb_tasks.errors import ModarbError
from modarb_tasks.paired import min_detectable_drop, mcnemar_p, newcombe_interval, pair, wilson


def test_discordant_counts():
    result = pair([1, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 1])
    assert (result.n, result.b, result.c, result.both) == (6, 2, 1, 2)
    assert result.delta == pytest.approx(-1 / 6)
    assert (result.before, result.after) == (pytest.approx(4 / 6), pytest.approx(3 / 6))


@pytest.mark.parametrize("before, after", [([1, 0], [1]), ([], []), ([1, 2], [1, 0])])
def test_unpairable_outcomes_are_refused(before, after):
    with pytest.raises(ModarbError):
        pair(before, after)


def test_mcnemar_exact_p_by_hand():
    # b=10, c=2: two-sided 2·P(X ≤ 2), X ~ Binomial(12, 1/2) = 2·(1 + 12 + 66)/4096
    assert mcnemar_p(10, 2) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32)  # 2·(1/2)^5
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 0) == 1.0


def test_wilson_by_hand():
    # 12 of 20, z 1.96: centre (0.6 + z²/40)/(1 + z²/20), half z·sqrt(0.24/20 + z²/1600)/(1 + z²/20)
    low, high = wilson(12, 20)
    assert (low, high) == (pytest.approx(0.38658, abs=1e-5), pytest.approx(0.78119, abs=1e-5))
    assert wilson(0, 10) == (0.0, pytest.approx(1.96**2 / (10 + 1.96**2)))


def test_newcombe_interval_by_hand():
    # no successes on either side: phi is 0 and each half-width is the other margin's Wilson bound
    bound = 1.96**2 / (10 + 1.96**2)
    assert newcombe_interval(10, 0, 0, 0) == (pytest.approx(-bound), pytest.approx(bound))
    # 20 items, both=12, b=2, c=0, neither=6: after 12/20 Wilson (0.38658, 0.78119), before 14/20
    # Wilson (0.48099, 0.85451); phi = (72 − 0 − 10)/sqrt(12·8·14·6) = 62/89.800; lower half-width
    # sqrt(0.21342² − 2·phi·0.21342·0.15451 + 0.15451²), upper sqrt(0.18119² − 2·phi·0.18119·0.21901 + 0.21901²)
    phi = 62 / math.sqrt(12 * 8 * 14 * 6)
    low_half = math.sqrt(0.21342**2 - 2 * phi * 0.21342 * 0.15451 + 0.15451**2)
    high_half = math.sqrt(0.18119**2 - 2 * phi * 0.18119 * 0.21901 + 0.21901**2)
    low, high = newcombe_interval(20, 2, 0, 12)
    assert (low, high) == (pytest.approx(-0.1 - low_half, abs=1e-4), pytest.approx(-0.1 + high_half, abs=1e-4))
    # runs that never disagree: an interval around 0 that is narrow but not a point
    low, high = newcombe_interval(200, 0, 0, 100)
    assert -0.03 < low < 0 < high < 0.03 and low == pytest.approx(-high)


@pytest.mark.parametrize("n, probs", [
    (200, (0.60, 0.05, 0.10, 0.25)),  # both, lost, gained, neither
    (200, (0.70, 0.12, 0.02, 0.16)),  # a drop of 10 points
    (50, (0.45, 0.02, 0.08, 0.45)),
    (40, (0.80, 0.05, 0.05, 0.10)),
])
def test_interval_covers_the_true_difference_in_at_least_93_percent(n, probs):
    rng = np.random.default_rng(2024)
    truth = probs[2] - probs[1]
    covered = 0
    for both, b, c, _ in rng.multinomial(n, probs, size=1000):
        low, high = newcombe_interval(n, int(b), int(c), int(both))
        covered += low <= truth <= high
    assert covered >= 930


def test_min_detectable_drop_closed_form():
    # tolerance + (z_0.975 + z_0.8)·spread/sqrt(n) with z_0.8 = 0.841621
    assert min_detectable_drop(200, math.sqrt(0.1), 0.02) == pytest.approx(0.02 + 2.801621 * math.sqrt(0.1 / 200),
                                                                          abs=1e-6)
    # at that drop the rule "estimate − z·se > tolerance" fires with probability Φ((D − t)/se − z) = 80%
    se = 0.3 / math.sqrt(400)
    drop = min_detectable_drop(400, 0.3, 0.01, 1.96)
    assert norm.cdf((drop - 0.01) / se - 1.96) == pytest.approx(0.8)
    assert min_detectable_drop(50, 0.3) == pytest.approx(2 * min_detectable_drop(200, 0.3))


def test_min_detectable_drop_is_what_the_paired_rule_catches_80_percent_of_the_time():
    n, lost, gained = 400, 0.106, 0.051
    both = 0.5
    rng = np.random.default_rng(7)
    spread = math.sqrt(lost + gained - (gained - lost) ** 2)
    assert min_detectable_drop(n, spread) == pytest.approx(lost - gained, abs=0.002)  # the design sits at the MDD
    caught = sum(newcombe_interval(n, int(b), int(c), int(a))[1] < 0
                 for a, b, c, _ in rng.multinomial(n, (both, lost, gained, 1 - both - lost - gained), size=1000))
    assert 740 <= caught <= 860
