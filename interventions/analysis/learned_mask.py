"""The learned head mask: a k-head block found by optimising the selectivity objective.

Why not one gradient run: a trained model sits at an optimum of each head's scale, so near the
open model (all gates 1) the objective is flat in exactly the heads that matter most, and a single
run's answer depends on where it starts and what closing a head costs. So:

1. Several starts (`init_logits`, plus seeded jitter): gates = sigmoid(theta), full-batch gradient
   ascent (Adam) on the smooth objective (`objective.Objective.gradient`) minus `sparsity` per unit
   of closedness. The price of closing is a continuation, not a guess: after every step it grows
   x1.5 while more than k gates are below 0.5 and shrinks /1.5 while fewer are, so each start ends
   near exactly k closed heads whatever `sparsity` it began with.
2. Projection: each start's k most closed heads, scored by the exact objective (heads blocked).
3. Refinement (`_refine`): greedy swaps from the best projection, each member tried against the
   `candidates` heads that the objective's gradient at the other members' block rates best, every
   swap scored exactly; at most `refine_sets` sets. The best set by the exact objective wins.

Cost: starts x steps forward+backward passes over the analysis batches, one more per refinement
gradient, and one forward pass over them per scored set - independent of L*H, so it fits a 7B model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from interventions.analysis.defaults import LearnedMaskOptions
from interventions.analysis.objective import Objective
from interventions.mechanism.heads import Head


@dataclass
class MaskSearch:
    """What the search found: the chosen set, every head's closedness, and how it got there."""

    heads: list[Head]
    closedness: torch.Tensor  # [L, H], the largest 1 - gate any start ended with
    objective: dict[str, float]  # the exact objective at `heads`
    starts: list[dict]
    refined_sets: int
    passes: int

    def scores(self) -> torch.Tensor:
        """1 + closedness for the chosen heads (so they rank first), closedness for the rest."""
        scores = self.closedness.clone()
        for head in self.heads:
            scores[head] += 1.0
        return scores


def _ranked(closedness: torch.Tensor) -> list[Head]:
    layers, heads = closedness.shape
    cells = [(float(closedness[l, h]), l, h) for l in range(layers) for h in range(heads)]
    return [(l, h) for _, l, h in sorted(cells, key=lambda c: (-c[0], c[1], c[2]))]


# hard-concrete gates (Louizos et al. 2018; on heads: Voita et al. 2019): stretch and temperature
STRETCH = (-0.1, 1.1)
TEMPERATURE = 2 / 3
_OPEN_EDGE = math.log((1 - STRETCH[0]) / (STRETCH[1] - 1)) * TEMPERATURE  # logit of the "fully open" edge


def _sample_gates(log_alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One hard-concrete draw: gates in [0, 1], exactly 1 or 0 with positive probability."""
    u = torch.rand(log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / TEMPERATURE)
    return (s * (STRETCH[1] - STRETCH[0]) + STRETCH[0]).clamp(0.0, 1.0)


def closedness(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(gate < 1): how likely a head's hard-concrete gate is not fully open."""
    return torch.sigmoid(_OPEN_EDGE - log_alpha)


def _descend(objective: Objective, init: float, k: int, options: LearnedMaskOptions, generator: torch.Generator,
             bar) -> tuple[torch.Tensor, dict]:
    """One start: the final closedness and the start's record.

    Every step draws hard-concrete gates, so heads are tried partly and fully closed where the
    objective has a slope (a trained model's objective is flat in a head near gate 1); Adam ascends
    the expected value minus `price` per expected not-fully-open gate.
    """
    log_alpha = torch.full(objective.shape, init) + options.jitter * torch.randn(objective.shape, generator=generator)
    log_alpha.requires_grad_(True)
    optimiser = torch.optim.Adam([log_alpha], lr=options.lr)
    price = options.sparsity
    history = []
    for _ in range(options.steps):
        gates = _sample_gates(log_alpha, generator)
        value, grad = objective.gradient(gates.detach())
        optimiser.zero_grad()
        (-(grad * gates).sum() + price * closedness(log_alpha).sum()).backward()
        optimiser.step()
        closed = int((log_alpha < 0).sum())  # deterministic gate below 0.5
        history.append([round(value, 5), round(price, 6), closed])
        price = price * 1.5 if closed > k else price / 1.5 if closed < k else price
        bar.update()
    return closedness(log_alpha.detach()).double(), {
        "init_log_alpha": init, "first_step": history[0] if history else None,
        "last_step": history[-1] if history else None, "step_terms": ["value", "price", "closed"]}


def _refine(objective: Objective, start: list[Head], scored: dict, options: LearnedMaskOptions) -> tuple[list[Head], int]:
    """Greedy swaps guided by the gradient at the rest of the set; returns (set, gradient passes).

    For each member (least closed first): block the others, read the objective's gradient there
    (one forward+backward per batch), and score exactly the set with the member replaced by each of
    the `candidates` heads whose closing the gradient rates best. Keep any swap that raises the
    value; stop when a round changes nothing or `refine_sets` sets have been scored.
    """
    current, gradients = list(start), 0
    budget = options.refine_sets

    def value(heads) -> float:
        key = tuple(sorted(heads))
        if key not in scored:
            scored[key] = objective.at(heads)
        return scored[key]["value"]

    changed = True
    while changed and budget > 0:
        changed = False
        for member in reversed(list(current)):
            rest = [head for head in current if head != member]
            _, grad = objective.gradient(objective.gates_blocking(rest))
            gradients += 1
            gain = -grad  # first-order change of the value when a gate goes 1 -> 0
            for head in rest:
                gain[head] = -math.inf
            order = _ranked(gain)[: options.candidates]
            for head in order:
                if budget <= 0:
                    break
                if tuple(sorted(rest + [head])) not in scored:
                    budget -= 1
                if value(rest + [head]) > value(current) + 1e-9:
                    current, changed = rest + [head], True
            if changed:
                break
    return current, gradients


def learned_mask(objective: Objective, k: int, options: LearnedMaskOptions = LearnedMaskOptions(), seed: int = 0,
                 progress: bool = True) -> MaskSearch:
    """The k-head set the search finds (see the module docstring); deterministic given `seed`."""
    generator = torch.Generator().manual_seed(seed)
    closed_by_start, starts = [], []
    with tqdm(total=len(options.init_logits) * options.steps, desc="learned mask", unit="step",
              disable=not progress) as bar:
        for init in options.init_logits:
            closedness, record = _descend(objective, init, k, options, generator, bar)
            projection = _ranked(closedness)[:k]
            record |= {"projection": [list(h) for h in projection], "objective": objective.at(projection)}
            closed_by_start.append(closedness)
            starts.append(record)
    closed = torch.stack(closed_by_start).amax(0)
    best = max(starts, key=lambda s: s["objective"]["value"])
    scored = {tuple(sorted(tuple(h) for h in s["projection"])): s["objective"] for s in starts}
    chosen, gradients = _refine(objective, [tuple(h) for h in best["projection"]], scored, options)
    chosen_ranked = [head for head in _ranked(closed) if head in chosen]  # most closed first
    refined = len(scored) - len(starts)
    passes = objective.forwards * (1 + 2 * (len(options.init_logits) * options.steps + gradients) + len(scored))
    return MaskSearch(chosen_ranked, closed, scored[tuple(sorted(chosen))], starts, refined, passes)
