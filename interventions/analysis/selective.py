"""Exact selective ranking: every head blocked alone, scored by the selectivity objective.

The plain exact sweep ranks heads by how much blocking one lowers the following logit difference,
so a general reading head that every task needs ranks as high as a head that only arbitrates. Here
each head's score is `objective.Objective.at({head})["value"]`: the relative drop of following
minus the control drops (in points, hinged at 0), so it ranks high only when blocking it is
*selective*. L*H + 1 forwards per analysis batch, follow and control batches alike: the clean
forward, then each block resumed from its layer (`Objective.sweep`).

On small models `exhaustive_sets` scores every k-head set exactly (the organism's 48 heads at
k = 2: 1,128 sets), the ground truth that the learned mask is checked against. It refuses more
than `max_sets` sets, so a 7B model never runs it.
"""

from __future__ import annotations

import math
from itertools import combinations

import torch

from interventions.analysis.defaults import MAX_SETS
from interventions.analysis.data import CONTROL_KINDS
from interventions.analysis.objective import Objective
from interventions.mechanism.heads import Head
from modarb_tasks.errors import ModarbError

TERMS = ("following_drop", *(f"{kind}_drop" for kind in CONTROL_KINDS))


def selective_sweep(objective: Objective, progress: bool = True,
                    swept: list[Head] | None = None) -> tuple[torch.Tensor, dict[str, list]]:
    """(value per head [L, H], each term per head as nested lists) with each head of `swept` (default:
    all) blocked alone; heads not swept score NaN (terms None)."""
    layers, heads = objective.shape
    swept = [(l, h) for l in range(layers) for h in range(heads)] if swept is None else swept
    values = torch.full((layers, heads), math.nan, dtype=torch.float64)
    terms = {term: [[None] * heads for _ in range(layers)] for term in TERMS}
    for (layer, head), scored in zip(swept, objective.sweep([[head] for head in swept], progress, "selective")):
        values[layer, head] = scored["value"]
        for term in TERMS:
            terms[term][layer][head] = round(scored.get(term, 0.0), 6)
    return values, terms


def set_count(num_heads: int, k: int) -> int:
    return math.comb(num_heads, k)


def exhaustive_sets(objective: Objective, k: int, max_sets: int = MAX_SETS, progress: bool = True) -> dict:
    """The best k-head set by the objective over every k-subset of heads, and its terms."""
    layers, heads = objective.shape
    count = set_count(layers * heads, k)
    if count > max_sets:
        raise ModarbError(f"an exhaustive search over {count:,} sets of {k} heads exceeds the limit of {max_sets:,}; "
                          "it is for small models: skip it")
    every = [(l, h) for l in range(layers) for h in range(heads)]
    sets = list(combinations(every, k))
    best, best_terms = None, None
    for heads_set, scored in zip(sets, objective.sweep(sets, progress, f"exhaustive {k}-sets")):
        if best_terms is None or scored["value"] > best_terms["value"]:
            best, best_terms = heads_set, scored
    return {"k": k, "sets": count, "heads": [list(h) for h in best], "objective": best_terms,
            "passes": (count + 1) * objective.forwards}
