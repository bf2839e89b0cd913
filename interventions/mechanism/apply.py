"""Apply an InterventionSpec to a model for the duration of a block: head scaling + knockout."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from interventions.mechanism.heads import scale_heads
from interventions.mechanism.knockout import knockout
from interventions.mechanism.spec import InterventionSpec
from interventions.mechanism.token_groups import EmptyGroupError, require_groups


@contextmanager
def apply_spec(
    model: nn.Module, spec: InterventionSpec, token_groups: Mapping[str, torch.Tensor] | None = None
) -> Iterator[None]:
    """Within the block, `model` runs with `spec` applied to the batch `token_groups` describe.

    `token_groups` (name -> bool [B, S], see token_groups.token_groups) is needed only for a
    position scope other than "all"/"last" and for knockout edges; a knockout edge on "last"
    without a "last" mask uses the final column (left-padded batches, as lm-eval pads them).
    """
    spec.validate_against(model)
    groups = dict(token_groups or {})
    needed = spec.groups_needed()
    if needed and not groups:
        raise EmptyGroupError(
            f"the spec needs token groups {', '.join(sorted(needed))}; pass token_groups= built by token_groups()"
        )
    if "last" in needed and "last" not in groups:
        groups["last"] = _final_column(next(iter(groups.values())))
    require_groups(groups, sorted(needed), needed_by=f"spec {spec.identity()}")
    with ExitStack() as stack:
        if spec.heads:
            positions = groups[spec.positions] if spec.positions in needed else spec.positions
            stack.enter_context(scale_heads(model, spec.scales(), positions))
        if spec.knockout is not None and spec.knockout.edges:
            ko = spec.knockout
            edges = [(groups[query], groups[key]) for query, key in ko.edges]
            stack.enter_context(knockout(model, edges, ko.layers, ko.heads))
        yield


def _final_column(like: torch.Tensor) -> torch.Tensor:
    last = torch.zeros_like(like, dtype=torch.bool)
    last[:, -1] = True
    return last
