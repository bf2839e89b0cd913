"""Learned amplification: gates >= 1 on a sparse head set that restore following where it failed.

Chosen on the validation (analysis) batches only; lm-eval then scores the result on the test split.
First-token proxies as in `objective.py`: a follow doc is *followed* when P_F >= 0.5.

- failed docs: P_F < 0.5 with every gate at 1; followed docs: the rest.
- gates = 1 + softplus(psi) >= 1 on every head, Adam on (full batch, per step):
      - mean P_F over the failed docs                         (restore)
      + keep * mean max(0, P_F(open) - P_F) over the followed (do not break)
      + control * sum over the controls of max(0, mass drop)  (spare both abilities)
      + sparsity * sum(gates - 1)                             (L1: amplify few heads)
- projection: the `n_heads` heads with the largest gates keep theirs, the rest go back to 1;
  then the gains (gate - 1) are scaled by each of `scales` and the version with the best
  validation value `restored - broken_weight * broken - control drops` is kept.

The fixed-alpha baseline (`choose_alpha`) scores one alpha on given heads the same way, so the
alpha it reports is chosen on validation, never on the test items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from interventions.analysis.batches import DocBatch, following_scores, last_logits
from interventions.analysis.objective import (
    CONTROL_KINDS,
    Objective,
    control_masses,
    control_masses_of,
    follow_probabilities,
)
from interventions.mechanism.heads import Head, gate_heads
from interventions.mechanism.resume import resumable


@dataclass(frozen=True)
class AmplifyOptions:
    steps: int = 30  # forward+backward passes over the analysis batches
    lr: float = 0.15
    init: float = -2.0  # psi at the start: gates 1 + softplus(-2) = 1.13
    keep: float = 2.0  # weight of not breaking followed docs
    control: float = 1.0  # weight of the control mass drops
    sparsity: float = 0.002  # price of one unit of gain (gate - 1)
    broken_weight: float = 2.0  # in the validation value that picks the final scale
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)


def _followed(objective: Objective) -> list[torch.Tensor]:
    return [p >= 0.5 for p in objective.open_follow]


def rates(objective: Objective, gates: torch.Tensor, broken_weight: float = AmplifyOptions.broken_weight) -> dict:
    """Restored share of the failed docs, broken share of the followed docs, control drops, value."""
    def intervention():
        return gate_heads(objective.model, gates)

    [follow] = follow_rates(objective, [intervention], broken_weight=broken_weight)
    return control_drops(objective, [intervention], [follow])[0]


Intervention = Callable[[], AbstractContextManager]  # makes the hooks (head gates, residual steering) afresh
CONTROL_ROUND = 8  # settings whose controls best_of scores together, batch by batch


@torch.no_grad()
def _logits_each(objective: Objective, batches: Sequence[DocBatch], interventions: Sequence[Intervention],
                 starts: Sequence[int] | None, at_last: bool = False) -> list[list[torch.Tensor]]:
    """[intervention][batch]: the last position's logits under each intervention. With `starts` (the first
    decoder layer each one acts at) each batch's clean forward runs once and every intervention resumes
    there (`resume.resumable`, the same numbers); without, full forwards. `at_last`: the interventions act
    at the last position only, so a resumed forward recomputes that position alone."""
    out: list[list[torch.Tensor]] = [[] for _ in interventions]
    for batch in batches:
        position = batch.inputs["input_ids"].shape[1] - 1 if at_last else 0
        clean = (resumable(objective.model, batch.inputs, set(starts), positions=[position])
                 if starts is not None else None)
        for index, make in enumerate(interventions):
            with make():
                out[index].append(last_logits(objective.model, batch) if clean is None
                                  else clean.last_logits(starts[index], position))
    return out


def follow_rates(objective: Objective, interventions: Sequence[Intervention], starts: Sequence[int] | None = None,
                 broken_weight: float = AmplifyOptions.broken_weight, at_last: bool = False) -> list[dict]:
    """The follow docs' part of `rates` under each intervention; its `bound` (restored share - broken_weight x
    broken share) is the value before the control drops, which can only lower it."""
    was = torch.cat(_followed(objective))
    failed, followed = int((~was).sum()), int(was.sum())
    out = []
    for logits in _logits_each(objective, objective.follow_batches, interventions, starts, at_last):
        now = torch.cat([following_scores(batch_logits, batch)[1] >= 0.5
                         for batch_logits, batch in zip(logits, objective.follow_batches)])
        row = {"failed": failed, "followed": followed, "restored": int((now & ~was).sum()),
               "broken": int((~now & was).sum())}
        row["restoration_rate"] = row["restored"] / failed if failed else float("nan")
        row["broken_rate"] = row["broken"] / followed if followed else 0.0
        row["bound"] = (row["restoration_rate"] if failed else 0.0) - broken_weight * row["broken_rate"]
        out.append(row)
    return out


def control_drops(objective: Objective, interventions: Sequence[Intervention], follows: Sequence[dict],
                  starts: Sequence[int] | None = None, at_last: bool = False) -> list[dict]:
    """Each of `follows` (from follow_rates) with each control's mass drop under its intervention, and the value."""
    out = []
    for logits, follow in zip(_logits_each(objective, objective.control_batches, interventions, starts, at_last),
                              follows):
        means = objective.control_means([control_masses_of(batch_logits, batch)
                                         for batch_logits, batch in zip(logits, objective.control_batches)])
        drops = {f"{kind}_drop": objective.open[kind] - means[kind]
                 for kind in CONTROL_KINDS if objective.n_control[kind]}
        out.append(follow | drops | {"value": follow["bound"] - sum(max(0.0, d) for d in drops.values())})
    return out


def best_of(objective: Objective, settings: Sequence[dict], interventions: Sequence[Intervention],
            starts: Sequence[int] | None = None, broken_weight: float = AmplifyOptions.broken_weight,
            at_last: bool = False) -> list[dict]:
    """Each setting's validation rates, the control drops computed only where they can still matter.

    Every setting's follow docs are scored; then the controls, CONTROL_ROUND settings at a time in order of
    the bound (the value before the drops, which only lower it), until the next bound falls below the best
    value found: a setting left there cannot win. The winner is the exhaustive search's (ties too: `chosen`
    breaks them by the settings' order); a pruned setting records its `bound` and no value. `starts`: the
    first decoder layer each setting acts at, so its forwards resume there (`at_last`: and recompute only
    the last position, where every setting acts).
    """
    follows = follow_rates(objective, interventions, starts, broken_weight, at_last)
    tried = [dict(setting) | follow for setting, follow in zip(settings, follows)]
    order = sorted(range(len(tried)), key=lambda i: -tried[i]["bound"])
    best = -math.inf
    while order and tried[order[0]]["bound"] >= best:
        batch = [i for i in order[:CONTROL_ROUND] if tried[i]["bound"] >= best]
        order = order[len(batch):]
        scored = control_drops(objective, [interventions[i] for i in batch], [follows[i] for i in batch],
                               None if starts is None else [starts[i] for i in batch], at_last)
        for index, rates_of in zip(batch, scored):
            tried[index] = dict(settings[index]) | rates_of
            best = max(best, rates_of["value"])
    return tried


def chosen(tried: Sequence[dict], tie: Callable[[dict], float]) -> dict:
    """The scored setting with the best value; ties go to the larger `tie(setting)`, then to the earlier one."""
    scored = [(point["value"], tie(point), -index) for index, point in enumerate(tried) if "value" in point]
    return tried[-max(scored)[2]]


def _loss(objective: Objective, gates: torch.Tensor, options: AmplifyOptions) -> float:
    """Backpropagate the smooth loss batch by batch (gates a leaf tensor); returns its value."""
    model, total = objective.model, 0.0
    was = _followed(objective)
    n_failed = max(1, sum(int((~w).sum()) for w in was))
    n_followed = max(1, sum(int(w.sum()) for w in was))
    with gate_heads(model, gates):
        for batch, open_pf, followed in zip(objective.follow_batches, objective.open_follow, was):
            pf = follow_probabilities(model, batch)
            loss = -pf[~followed].sum() / n_failed + options.keep * torch.relu(open_pf - pf)[followed].sum() / n_followed
            loss.backward()
            total += float(loss.detach())
        for batch, open_mass in zip(objective.control_batches, objective.open_control):
            loss = options.control * torch.relu(open_mass - control_masses(model, batch)).sum() / max(
                1, sum(objective.n_control.values()))
            loss.backward()
            total += float(loss.detach())
    return total


@dataclass(frozen=True)
class LearnedAmplification:
    """The learned gates: heads (largest gain first), their gates, and the validation rates of every scale tried."""

    heads: tuple[Head, ...]
    gates: tuple[float, ...]
    validation: dict  # the rates at the chosen scale
    tried: tuple[dict, ...]
    options: AmplifyOptions
    loss: tuple[float, float] | None  # the smooth loss at the first and the last step


@dataclass(frozen=True)
class AlphaChoice:
    """The fixed-alpha baseline: the alpha chosen on validation, and every alpha's rates there."""

    alpha: float
    validation: tuple[dict, ...]


def learn_amplification(objective: Objective, n_heads: int, options: AmplifyOptions = AmplifyOptions(),
                        progress: bool = True) -> LearnedAmplification:
    """The learned gates (see the module docstring): heads, their gates and the validation rates."""
    psi = torch.full(objective.shape, options.init, requires_grad=True)
    optimiser = torch.optim.Adam([psi], lr=options.lr)
    history = []
    for _ in tqdm(range(options.steps), desc="learned amplification", unit="step", disable=not progress):
        gains = nn.functional.softplus(psi)
        leaf = (1 + gains).detach().requires_grad_(True)
        value = _loss(objective, leaf, options)
        optimiser.zero_grad()
        ((leaf.grad + options.sparsity) * gains).sum().backward()
        optimiser.step()
        history.append(round(value, 5))
    gains = nn.functional.softplus(psi).detach()
    order = sorted(((float(gains[l, h]), l, h) for l in range(gains.shape[0]) for h in range(gains.shape[1])),
                   key=lambda c: (-c[0], c[1], c[2]))[:n_heads]
    heads = [(l, h) for _, l, h in order]
    tried = []
    for scale in options.scales:
        gates = torch.ones(objective.shape)
        for head in heads:
            gates[head] = 1 + scale * float(gains[head])
        tried.append({"scale": scale, "gates": {f"L{l}H{h}": round(float(gates[l, h]), 4) for l, h in heads},
                      **rates(objective, gates, options.broken_weight)})
    best = max(tried, key=lambda t: t["value"])
    return LearnedAmplification(tuple(heads), tuple(best["gates"][f"L{l}H{h}"] for l, h in heads), best, tuple(tried),
                                options, (history[0], history[-1]) if history else None)


def choose_alpha(objective: Objective, heads: list[Head], alphas: list[float],
                 broken_weight: float = AmplifyOptions.broken_weight) -> AlphaChoice:
    """The fixed-alpha baseline on validation: every alpha's rates, and the alpha with the best value."""
    curve = []
    for alpha in alphas:
        gates = torch.ones(objective.shape)
        for head in heads:
            gates[tuple(head)] = alpha
        curve.append({"alpha": alpha, **rates(objective, gates, broken_weight)})
    best = max(curve, key=lambda point: (point["value"], -point["alpha"]))
    return AlphaChoice(best["alpha"], tuple(curve))
