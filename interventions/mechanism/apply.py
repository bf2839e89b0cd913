"""Apply an InterventionSpec to a model: prepared once per model, hooked around each batch.

Preparing (`prepare_spec`) is the per-model work: check that the spec was made for the model
and locate the model's decoder heads. Applying (`apply_prepared`) is the per-batch work: hook
head scaling, knockout and residual steering around one batch, given that batch's token-group masks as a
BatchState value. `apply_spec` does both, for a one-off block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from interventions.mechanism.heads import scale_heads
from interventions.mechanism.knockout import knockout
from interventions.mechanism.locate import HeadLayout, InterventionError, locate_heads
from interventions.mechanism.spec import InterventionSpec
from interventions.mechanism.steer import steer
from interventions.mechanism.token_groups import EmptyGroupError, require_groups


@dataclass(frozen=True)
class PreparedSpec:
    """A spec checked against one model, with that model's heads located: what every batch reuses."""

    model: nn.Module
    spec: InterventionSpec
    layout: HeadLayout
    groups_needed: frozenset[str]  # token groups each batch must supply masks for


@dataclass(frozen=True)
class BatchState:
    """What one batch's hooks need besides the prepared spec: the batch's docs (one per row, when
    known), their token-group masks (name -> bool [B, S], see token_groups.token_groups), and the
    answer positions (bool [B, W], see `answer_positions`) that a `positions="last"` scope acts on."""

    docs: tuple[Mapping | None, ...] = ()
    token_groups: Mapping[str, torch.Tensor] | None = None
    answer: torch.Tensor | None = None

    def __post_init__(self) -> None:
        rows = {mask.shape[0] for mask in (self.token_groups or {}).values()}
        if self.docs and rows and rows != {len(self.docs)}:
            raise InterventionError(f"{len(self.docs)} docs but token-group masks for {sorted(rows)} rows in one batch")


def prepare_spec(model: nn.Module, spec: InterventionSpec, layout: HeadLayout | None = None) -> PreparedSpec:
    """`spec` ready for `model` (SpecError unless it was made for it); `layout`: the model's heads,
    when the caller has located them already."""
    layout = locate_heads(model) if layout is None else layout
    spec.validate_against(model, layout)
    return PreparedSpec(model=model, spec=spec, layout=layout, groups_needed=frozenset(spec.groups_needed()))


@contextmanager
def apply_prepared(prepared: PreparedSpec, batch: BatchState | None = None) -> Iterator[None]:
    """Within the block, `prepared.model` runs with the spec applied to `batch`.

    `batch.token_groups` is needed only for a position scope other than "all"/"last" and for
    knockout edges (None: a batch without masks); a knockout edge on "last" without a "last"
    mask uses the final column (left-padded batches, as lm-eval pads them).
    """
    spec = prepared.spec
    groups = _batch_groups(prepared, batch.token_groups if batch is not None else None)
    with ExitStack() as stack:
        if spec.heads:
            positions = _scope(spec.positions, prepared, groups, batch)
            stack.enter_context(scale_heads(prepared.model, spec.scales(), positions, layout=prepared.layout))
        if spec.steering is not None:
            steering = spec.steering
            scope = _scope(steering.positions, prepared, groups, batch)
            stack.enter_context(steer(prepared.model, steering.vector, steering.layers, steering.alpha, scope,
                                      layout=prepared.layout))
        if spec.knockout is not None and spec.knockout.edges:
            ko = spec.knockout
            edges = [(groups[query], groups[key]) for query, key in ko.edges]
            stack.enter_context(knockout(prepared.model, edges, ko.layers, ko.heads, layout=prepared.layout))
        yield


@contextmanager
def apply_spec(
    model: nn.Module, spec: InterventionSpec, token_groups: Mapping[str, torch.Tensor] | None = None
) -> Iterator[None]:
    """Within the block, `model` runs with `spec` applied to the batch `token_groups` describe
    (prepare_spec + apply_prepared; a caller hooking many batches prepares once)."""
    with apply_prepared(prepare_spec(model, spec), BatchState(token_groups=token_groups)):
        yield


def answer_positions(attention_mask: torch.Tensor, answer_lengths: Sequence[int] | None = None,
                     generated: int = 0) -> torch.Tensor:
    """Bool [B, S + generated]: the positions of each row that predict its answer, where a
    `positions="last"` scope acts whether the answer is generated or scored.

    That is the row's last prompt position and every answer position after it: the `generated`
    columns a cached generate() appends, or, for a scored continuation whose tokens end the row, the
    last context position and the first `answer_lengths[row] - 1` continuation positions (the
    continuation's final token predicts nothing that is scored, so including it changes nothing).
    A plain "final position of each call" scope would act on every generated token in a cached
    generate() but only on the final one in an uncached forward, so the two would disagree."""
    attended = attention_mask.bool()
    rows, width = attended.shape
    columns = torch.arange(width + generated, device=attended.device)
    last = torch.where(attended, torch.arange(width, device=attended.device), -1).amax(1)
    lengths = torch.as_tensor(answer_lengths or [0] * rows, device=attended.device)
    start = last - lengths.clamp(min=0)
    return (columns[None, :] >= start[:, None]) & (columns[None, :] <= last[:, None] + generated)


def _scope(positions: str, prepared: PreparedSpec, groups: Mapping[str, torch.Tensor],
           batch: BatchState | None) -> str | torch.Tensor:
    """A spec's position scope for one batch: a token group's mask, the answer positions for "last"
    when the batch has them, else the name ("all", or "last" as the final position of each call)."""
    if positions in prepared.groups_needed:
        return groups[positions]
    if positions == "last" and batch is not None and batch.answer is not None:
        return batch.answer
    return positions


def _batch_groups(prepared: PreparedSpec, token_groups: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The batch's masks for every group the spec needs (EmptyGroupError naming the first missing or empty one)."""
    groups = dict(token_groups or {})
    needed = prepared.groups_needed
    if needed and not groups:
        raise EmptyGroupError(
            f"the spec needs token groups {', '.join(sorted(needed))}; pass token_groups= built by token_groups()"
        )
    if "last" in needed and "last" not in groups:
        groups["last"] = _final_column(next(iter(groups.values())))
    require_groups(groups, sorted(needed), needed_by=f"spec {prepared.spec.identity()}")
    return groups


def _final_column(like: torch.Tensor) -> torch.Tensor:
    last = torch.zeros_like(like, dtype=torch.bool)
    last[:, -1] = True
    return last
