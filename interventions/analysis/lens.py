"""Where the following-vs-competitor decision appears in the residual stream, and who writes it.

Logit lens: the residual stream after each decoder layer, passed through the model's own final
norm and unembedding, gives a follow-minus-competitor logit difference per layer
(log p(F) - log p(C) over the first answer token's candidate sets, as the model's output is
scored), at the last position and averaged over the instruction tokens.

Direct logit attribution: in a Llama-like decoder the last position's final residual is
embedding + sum over layers of (attention output + MLP output). The final RMSNorm is made
linear by freezing its scale 1/rms(x) at the clean run's value, and the set differences are
linearised by weighting each candidate token by its softmax share within its set in the clean
run (exact when each set has one token). Then each term's projection on the resulting
(follow - compete) unembedding direction is its additive share of the linearised logit
difference sum_F pi*logit - sum_C pi*logit, and the shares sum to it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from interventions.analysis.batches import DocBatch, candidate_log_mass, following_scores, iter_batches
from interventions.analysis.flow import band, split_docs
from interventions.mechanism.locate import UnsupportedModelError, locate_heads


@dataclass(frozen=True)
class DecoderParts:
    """The modules the lens reads: decoder layers, what each adds to the residual stream (its attention
    and MLP output, or their post-norms in Gemma-style layers), final norm, unembedding."""

    layers: tuple[nn.Module, ...]
    attentions: tuple[nn.Module, ...]
    mlps: tuple[nn.Module, ...]
    final_norm: nn.Module
    unembedding: nn.Linear


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Found from the attention modules locate_heads finds: their parents are the decoder layers."""
    attentions = locate_heads(model).attentions
    parent = {child: module for module in model.modules() for child in module.children()}
    layers = tuple(parent[attention] for attention in attentions)
    decoder = parent.get(parent.get(layers[0]))
    final_norm = getattr(decoder, "norm", None)
    mlps = tuple(getattr(layer, "mlp", None) for layer in layers)
    unembedding = model.get_output_embeddings()
    if final_norm is None or any(mlp is None for mlp in mlps) or not isinstance(unembedding, nn.Linear):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a Llama-like decoder (layers with .mlp, a decoder .norm, a linear "
            "lm_head); the logit lens supports those"
        )
    if all(hasattr(layer, "post_feedforward_layernorm") for layer in layers):
        # Gemma 2/3 "sandwich" layers add norm(attention) and norm(MLP): those outputs are what the residual gets.
        attentions = tuple(layer.post_attention_layernorm for layer in layers)
        mlps = tuple(layer.post_feedforward_layernorm for layer in layers)
    return DecoderParts(layers, attentions, mlps, final_norm, unembedding)


@dataclass
class Residuals:
    """What one forward wrote into the residual stream: the embedding entering layer 0, each layer's
    attention output and MLP output at the last position, and each layer's output everywhere."""

    embedding: torch.Tensor | None = None  # [B, D], last position
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer [B, D], last position
    mlp: list[torch.Tensor] = field(default_factory=list)
    layer_out: list[torch.Tensor] = field(default_factory=list)  # per layer [B, S, D]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_residuals(parts: DecoderParts) -> Iterator[Residuals]:
    """Forward hooks that fill a Residuals during the block's forwards (meant for one forward)."""
    record = Residuals()

    def embedding_hook(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        record.embedding = hidden[:, -1].detach()

    def store(target: list[torch.Tensor], last_only: bool):
        def hook(module, args, output):
            hidden = _first(output).detach()
            target.append(hidden[:, -1] if last_only else hidden)

        return hook

    with ExitStack() as hooks:
        hooks.callback(parts.layers[0].register_forward_pre_hook(embedding_hook, with_kwargs=True).remove)
        for layer, attention, mlp in zip(parts.layers, parts.attentions, parts.mlps):
            hooks.callback(attention.register_forward_hook(store(record.attention, True)).remove)
            hooks.callback(mlp.register_forward_hook(store(record.mlp, True)).remove)
            hooks.callback(layer.register_forward_hook(store(record.layer_out, False)).remove)
        yield record


def check_residual_sum(record: Residuals, family: str) -> None:
    """UnsupportedModelError unless every layer adds exactly its attention and MLP outputs (Llama-like)."""
    previous = record.embedding
    for layer, (attention, mlp, out) in enumerate(zip(record.attention, record.mlp, record.layer_out)):
        terms = (previous.double(), attention.double(), mlp.double())
        error = (out[:, -1].double() - sum(terms)).norm(dim=-1)
        allowed = 8 * torch.finfo(out.dtype).eps * sum(term.norm(dim=-1) for term in terms)
        if (error > allowed).any():
            raise UnsupportedModelError(
                f"layer {layer} of {family!r} does not add its attention and MLP outputs to the residual stream "
                "(x + attn + mlp); the attention/MLP contribution supports Llama-like decoders"
            )
        previous = out[:, -1]


@dataclass
class LensPart:
    """Per-item lens and contributions on one (layout, instruction side); [items, layers] or [items]."""

    layout: str
    side: str
    item_ids: list[str]
    lens_last: torch.Tensor
    lens_instruction: torch.Tensor
    attention: torch.Tensor
    mlp: torch.Tensor
    embedding: torch.Tensor
    linearised: torch.Tensor  # sum_F pi*logit - sum_C pi*logit: what the contributions add up to
    logit_diff: torch.Tensor  # the model's log p(F) - log p(C)

    def lens_json(self) -> dict:
        return {"last": band(self.lens_last).to_json(), "instruction": band(self.lens_instruction).to_json()}

    def contributions_json(self) -> dict:
        names = ("attention", "mlp", "embedding", "linearised", "logit_diff")
        return {name: band(getattr(self, name)).to_json() for name in names}


@dataclass
class LensResult:
    num_layers: int
    parts: list[LensPart]

    def part(self, layout: str, side: str) -> LensPart:
        return next(p for p in self.parts if p.layout == layout and p.side == side)

    def to_json(self) -> dict:
        lens: dict[str, dict] = {}
        contributions: dict[str, dict] = {}
        for part in self.parts:
            lens.setdefault(part.layout, {})[part.side] = part.lens_json()
            contributions.setdefault(part.layout, {})[part.side] = part.contributions_json()
        return {"lens": lens, "contributions": contributions}


def _lens_difference(parts: DecoderParts, hidden: torch.Tensor, follow, compete) -> torch.Tensor:
    """log p(F) - log p(C) read from residual vectors [N, D] through the final norm and unembedding."""
    log_probs = torch.log_softmax(parts.unembedding(parts.final_norm(hidden)).float(), dim=-1)
    return candidate_log_mass(log_probs, follow) - candidate_log_mass(log_probs, compete)


def _set_direction(unembedding: torch.Tensor, logits: torch.Tensor, ids: Sequence[Sequence[int]]):
    """Per row: softmax-within-set weights pi of the set's tokens -> (sum pi*W[t] [B, D], sum pi*logit [B])."""
    directions, values = [], []
    for row, row_ids in enumerate(ids):
        token_logits = logits[row, list(row_ids)].double()
        weights = torch.softmax(token_logits, dim=-1)
        directions.append(weights @ unembedding[list(row_ids)])
        values.append(weights @ token_logits)
    return torch.stack(directions), torch.stack(values)


@torch.no_grad()
def lens_batch(model, parts: DecoderParts, batch: DocBatch) -> dict[str, torch.Tensor]:
    """Lens and direct contributions of one batch, per row (see the module docstring)."""
    with record_residuals(parts) as record:
        logits = model(**batch.inputs, logits_to_keep=1).logits[:, -1].float()
    family = model.config.model_type
    check_residual_sum(record, family)
    instruction = batch.groups["instruction"]
    rows = instruction.nonzero()[:, 0]
    counts = instruction.sum(1).clamp(min=1).double()
    lens_last, lens_instruction = [], []
    for out in record.layer_out:
        lens_last.append(_lens_difference(parts, out[:, -1], batch.follow_ids, batch.compete_ids))
        per_token = _lens_difference(
            parts, out[instruction], [batch.follow_ids[r] for r in rows], [batch.compete_ids[r] for r in rows]
        )
        summed = torch.zeros(len(batch), dtype=torch.float64, device=per_token.device)
        lens_instruction.append(summed.index_add(0, rows, per_token.double()) / counts)

    # Frozen-norm linearisation: RMSNorm(c) ~ gain * c * scale, scale = 1/rms(final residual) of the clean run.
    norm = parts.final_norm
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise UnsupportedModelError(f"the final norm of {family!r} is not an RMSNorm (no eps); the lens needs one")
    final = record.layer_out[-1][:, -1].double()
    scale = torch.rsqrt(final.pow(2).mean(-1, keepdim=True) + eps)
    ones = torch.ones(final.shape[-1], dtype=record.embedding.dtype, device=final.device)
    gain = norm(ones).double() * (1 + eps) ** 0.5
    weight = parts.unembedding.weight.double()
    follow_dir, follow_value = _set_direction(weight, logits, batch.follow_ids)
    compete_dir, compete_value = _set_direction(weight, logits, batch.compete_ids)
    direction = (follow_dir - compete_dir) * gain * scale

    def project(term: torch.Tensor) -> torch.Tensor:
        return (term.double() * direction).sum(-1)

    return {
        "lens_last": torch.stack(lens_last, 1),
        "lens_instruction": torch.stack(lens_instruction, 1),
        "attention": torch.stack([project(term) for term in record.attention], 1),
        "mlp": torch.stack([project(term) for term in record.mlp], 1),
        "embedding": project(record.embedding),
        "linearised": follow_value - compete_value,
        "logit_diff": following_scores(logits, batch)[0],
    }


def logit_lens(
    model, processor, docs: Sequence[dict], batch_size: int = 16, progress: bool = False
) -> LensResult:
    """Logit lens and attention/MLP direct contributions per (layout, instruction side)."""
    parts = decoder_parts(model)
    split = split_docs(docs)
    result = []
    with tqdm(total=len(docs), desc="lens", unit="doc", disable=not progress) as bar:
        for (layout, side), part_docs in split.items():
            chunks: dict[str, list[torch.Tensor]] = {}
            for batch in iter_batches(model, processor, part_docs, batch_size):
                for name, value in lens_batch(model, parts, batch).items():
                    chunks.setdefault(name, []).append(value.double().cpu())
                bar.update(len(batch))
            result.append(
                LensPart(
                    layout=layout,
                    side=side,
                    item_ids=[doc["item_id"] for doc in part_docs],
                    **{name: torch.cat(values) for name, values in chunks.items()},
                )
            )
    return LensResult(num_layers=len(parts.layers), parts=result)
