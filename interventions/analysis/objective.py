"""The one objective every head set is judged by: break modality following, spare both controls.

All terms are first-answer-token proxies on the analysis (validation) batches, in [0, 1]:

- following: mean binary-normalised P_F = p(F) / (p(F) + p(C)) over the follow docs; its
  *relative drop* under a block, 1 - P_F(blocked) / P_F(open), is the MF-ratio cut the paper reports.
- controls: per control kind, the mean probability mass of the correct answer's first tokens; its
  *drop in points*, open - blocked (negative when the block helps), is what the control costs.

    value = following_drop - control_weight * sum over the two controls of max(0, control drop)

Higher is better: a set that halves following and costs the controls nothing scores 0.5; one that
also costs a control 21 points scores 0.29. The learned mask optimises a smooth version of it (the
gates are continuous, the control penalty is taken per batch so each batch can be backpropagated
alone), and every ranking's top-k set is then scored by `at` exactly the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from interventions.analysis.batches import DocBatch, candidate_log_mass, following_scores, last_logits
from interventions.analysis.data import CONTROL_KINDS
from interventions.mechanism.heads import Head, gate_heads
from interventions.mechanism.locate import locate_heads
from interventions.mechanism.resume import resumable

CONTROL_WEIGHT = 1.0  # one point of control mass lost costs as much as one point of relative following drop


def follow_probabilities(model: nn.Module, batch: DocBatch) -> torch.Tensor:
    """P_F per row of a follow batch."""
    return following_scores(last_logits(model, batch), batch)[1]


def control_masses(model: nn.Module, batch: DocBatch) -> torch.Tensor:
    """Per row of a control batch, the probability mass on the correct answer's first tokens."""
    return control_masses_of(last_logits(model, batch), batch)


def control_masses_of(logits: torch.Tensor, batch: DocBatch) -> torch.Tensor:
    """`control_masses` from the batch's last-position logits [B, V]."""
    return candidate_log_mass(torch.log_softmax(logits.float(), dim=-1), batch.follow_ids).exp()


def _kind_masks(batch: DocBatch) -> dict[str, torch.Tensor]:
    kinds = [doc.get("kind") for doc in batch.docs]
    return {kind: torch.tensor([k == kind for k in kinds]) for kind in CONTROL_KINDS if kind in kinds}


@dataclass
class Objective:
    """The objective on fixed batches, with the open model's values computed once."""

    model: nn.Module
    follow_batches: Sequence[DocBatch]
    control_batches: Sequence[DocBatch]
    control_weight: float = CONTROL_WEIGHT

    def __post_init__(self) -> None:
        layout = locate_heads(self.model)
        self.shape = (layout.num_layers, layout.num_heads)
        self.n_follow = sum(len(b) for b in self.follow_batches)
        self.n_control = {kind: sum(int(m.sum()) for b in self.control_batches
                                    for k, m in _kind_masks(b).items() if k == kind) for kind in CONTROL_KINDS}
        with torch.no_grad():
            self.open_follow = [follow_probabilities(self.model, b).detach() for b in self.follow_batches]
            self.open_control = [control_masses(self.model, b).detach() for b in self.control_batches]
        self.open = self._terms(self.open_follow, self.open_control)
        self.forwards = len(self.follow_batches) + len(self.control_batches)  # per evaluation

    def _terms(self, follow: Sequence[torch.Tensor], control: Sequence[torch.Tensor]) -> dict[str, float]:
        return {"following": float(torch.cat(follow).double().mean()) if follow else float("nan"),
                **self.control_means(control)}

    def control_means(self, control: Sequence[torch.Tensor]) -> dict[str, float]:
        """Mean correct-answer mass per control kind, from `control_masses` of each control batch."""
        means = {}
        for kind in CONTROL_KINDS:
            values = [mass[mask] for mass, b in zip(control, self.control_batches)
                      for k, mask in _kind_masks(b).items() if k == kind]
            means[kind] = float(torch.cat(values).double().mean()) if values else float("nan")
        return means

    def gates_blocking(self, heads: Iterable[Head]) -> torch.Tensor:
        gates = torch.ones(self.shape)
        for layer, head in heads:
            gates[layer, head] = 0.0
        return gates

    @torch.no_grad()
    def evaluate(self, gates: torch.Tensor) -> dict[str, float]:
        """Every term and the value with the heads scaled by `gates` (one forward per batch)."""
        with gate_heads(self.model, gates):
            follow = [follow_probabilities(self.model, b) for b in self.follow_batches]
            control = [control_masses(self.model, b) for b in self.control_batches]
        return self.score(self._terms(follow, control))

    def score(self, terms: dict[str, float]) -> dict[str, float]:
        """`terms` (mean P_F and control masses) turned into the drops and the value."""
        drop = 1 - terms["following"] / self.open["following"] if self.open["following"] > 0 else 0.0
        out = {"value": drop, "following": terms["following"], "following_drop": drop}
        for kind in CONTROL_KINDS:
            if self.n_control[kind]:
                out[kind] = terms[kind]
                out[f"{kind}_drop"] = self.open[kind] - terms[kind]
                out["value"] -= self.control_weight * max(0.0, out[f"{kind}_drop"])
        return out

    def at(self, heads: Iterable[Head]) -> dict[str, float]:
        """The objective with `heads` blocked."""
        return self.evaluate(self.gates_blocking(heads))

    @torch.no_grad()
    def sweep(self, head_sets: Sequence[Sequence[Head]], progress: bool = False, desc: str = "sets") -> list[dict]:
        """`at` for each head set, the same numbers, batch by batch: each batch's clean forward is run
        once (`resume.resumable`) and each set's forward resumes from its lowest layer."""
        follow: list[list[torch.Tensor]] = [[] for _ in head_sets]
        control: list[list[torch.Tensor]] = [[] for _ in head_sets]
        starts = [min((layer for layer, _ in heads), default=0) for heads in head_sets]
        work = [(b, follow, lambda logits, b: following_scores(logits, b)[1]) for b in self.follow_batches] + \
            [(b, control, control_masses_of) for b in self.control_batches]
        with tqdm(total=len(work) * len(head_sets), desc=desc, unit="set", disable=not progress) as bar:
            for batch, values, score in work:
                clean = resumable(self.model, batch.inputs, set(starts))
                for heads, start, out in zip(head_sets, starts, values):
                    with gate_heads(self.model, self.gates_blocking(heads)):
                        out.append(score(clean.last_logits(start), batch))
                    bar.update()
        return [self.score(self._terms(f, c)) for f, c in zip(follow, control)]

    def gradient(self, gates: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(surrogate value, its gradient w.r.t. `gates`), accumulated batch by batch.

        Surrogate: the same value, but each control batch's drop per kind is hinged on its own, so
        a batch can be backpropagated alone (memory of one batch) - a slightly stricter penalty.
        Call it inside `identify.frozen` so that only the gates get gradients.
        """
        leaf = gates.detach().clone().requires_grad_(True)
        value = 1.0
        with gate_heads(self.model, leaf):
            for batch in self.follow_batches:
                term = follow_probabilities(self.model, batch).sum() / (self.n_follow * self.open["following"])
                term.backward()  # leaf.grad collects d(-value)/d(gates)
                value -= float(term.detach())
            for batch, open_mass in zip(self.control_batches, self.open_control):
                mass = control_masses(self.model, batch)
                penalty = sum(torch.relu((open_mass[mask] - mass[mask]).sum()) / self.n_control[kind]
                              for kind, mask in _kind_masks(batch).items())
                if torch.is_tensor(penalty) and penalty.requires_grad:
                    (self.control_weight * penalty).backward()
                value -= self.control_weight * float(penalty.detach() if torch.is_tensor(penalty) else penalty)
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        return value, -grad  # d(value)/d(gates)
