"""Which decoder attention heads decide modality arbitration: three rankings of every head.

All three score the same quantity on the follow_image and follow_text docs: the first answer
token's logit difference log p(F) - log p(C) at the last prompt position
(`batches.following_scores`). A positive score means the head supports following (blocking it
lowers the difference); rankings sort highest first.

- attribution (cheap): gradient x activation on per-head gates (`gates.gate_heads` at 1). The
  gradient of the summed difference w.r.t. gate (l, h) is the first-order change per unit gate;
  blocking moves the gate 1 -> 0, so the estimated drop of the mean is that gradient divided by
  the number of docs. One forward + one backward per batch scores every head.
- ablation (exact): each head blocked in turn (`heads.scale_heads`, scale 0); the measured drop
  of the mean. L*H + 1 forwards per batch, each block's forward resumed from its layer
  (`mechanism.resume`): the ground truth attribution approximates.
- selective (exact): each head blocked alone, scored by the selectivity objective
  (`objective.py`: relative drop of following minus the controls' drops), so a general reading
  head that every task needs does not rank as an arbitration head (`selective.py`).
- learned: a k-head block found by optimising that objective with hard-concrete gates, several
  starts and an exact refinement (`learned_mask.py`); its top k is the set it found.

Every ranking's top-k set is then scored by the same objective on the same batches
(`IdentifyResult.objective`), so anyone can see which set is best by it; on small models an
exhaustive search over all k-head sets gives the optimum to compare with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import tqdm

from interventions.analysis.data import CONTROL_KINDS, FOLLOW_KINDS, SHAPES_SEED, SHAPES_SPLIT, shapes_docs
from interventions.analysis.batches import DocBatch, following_scores, iter_batches, logit_difference
from interventions.analysis.gate_response import GATES, describe, gate_response
from interventions.mechanism.heads import Head, gate_heads
from interventions.analysis.defaults import (
    EXACT_SWEEPS,
    METHODS,
    IdentifyConfig,
    LearnedMaskOptions,
    check_fraction,
    top_k,
)
from interventions.analysis.learned_mask import learned_mask
from interventions.analysis.objective import Objective
from interventions.analysis.plan import shortlist_size
from interventions.analysis.selective import MAX_SETS, exhaustive_sets, selective_sweep, set_count
from modarb_tasks.errors import ModarbError
from modarb_tasks.outdir import OutputFolder
from interventions.mechanism.heads import scale_heads
from interventions.mechanism.resume import resumable
from interventions.mechanism.locate import locate_heads
from interventions.mechanism.spec import InterventionSpec, ModelFingerprint, model_fingerprint

SCHEMA_VERSION = "modarb.identify/v1"


@dataclass
class Ranking:
    """One method's scores [layers, heads] and what computing them cost."""

    method: str
    scores: torch.Tensor
    passes: int  # model passes: forwards + backwards
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ranked(self) -> list[tuple[int, int, float]]:
        return rank_heads(self.scores)

    def to_dict(self) -> dict[str, Any]:
        ranked = self.ranked
        return {
            "scores": [[None if math.isnan(v) else v for v in row] for row in self.scores.tolist()],
            "ranked": [list(cell) for cell in ranked],
            "heads": [[l, h] for l, h, _ in ranked],  # the ranking without scores, best first
            "passes": self.passes,
            "seconds": round(self.seconds, 3),
            **self.details,
        }


@dataclass
class IdentifyResult:
    """The rankings of one identify run and how far they agree."""

    rankings: dict[str, Ranking]
    fraction: float
    n_follow_docs: int
    n_control_docs: int
    gate_response: list[dict] = field(default_factory=list)  # curves of the top heads (gate_response.py)
    objective: dict[str, Any] = field(default_factory=dict)  # the objective at each ranking's top set
    exhaustive: dict[str, Any] | None = None  # the exhaustive optimum over k-head sets (small models)

    def pairs(self) -> list[tuple[str, str]]:
        return list(combinations([m for m in METHODS if m in self.rankings], 2))

    def overlaps(self) -> dict[str, float]:
        """Top-k overlap |A ∩ B| / k of every pair of methods at `fraction`."""
        return {
            f"{a}~{b}": top_overlap(self.rankings[a].scores, self.rankings[b].scores, self.fraction)
            for a, b in self.pairs()
        }

    def correlations(self) -> dict[str, float | None]:
        """Spearman rank correlation over all heads of every pair (None when a ranking is constant)."""
        return {
            f"{a}~{b}": rank_correlation(self.rankings[a].scores, self.rankings[b].scores) for a, b in self.pairs()
        }

    @property
    def top_overlap(self) -> float | None:
        """Attribution's top-k overlap with the exact sweep's: the headline agreement (None: no sweep)."""
        return self.overlaps().get("attribution~ablation")

    @property
    def rank_correlation(self) -> float | None:
        return self.correlations().get("attribution~ablation")

    def ranked_heads(self, method: str) -> list[Head]:
        """`method`'s ranking of every head, best first."""
        return [(l, h) for l, h, _ in self.rankings[method].ranked]

    def to_dict(self) -> dict[str, Any]:
        overlaps, correlations = self.overlaps(), self.correlations()
        any_ranking = next(iter(self.rankings.values()))
        return {
            "fraction": self.fraction,
            "k": top_k(any_ranking.scores.numel(), self.fraction),
            "n_follow_docs": self.n_follow_docs,
            "n_control_docs": self.n_control_docs,
            "rankings": {
                method: {**ranking.to_dict(), "top": [list(h) for h in top_heads(ranking.scores, self.fraction)]}
                for method, ranking in self.rankings.items()
            },
            "overlaps": overlaps,
            "rank_correlations": correlations,
            # attribution checked against the exact sweep: the headline agreement numbers
            "top_overlap": overlaps.get("attribution~ablation"),
            "rank_correlation": correlations.get("attribution~ablation"),
            "gate_response": {"gates": list(GATES), "heads": self.gate_response},
            "objective": self.objective,
            "exhaustive": self.exhaustive,
        }


# --- selection and agreement ------------------------------------------------------------------
def rank_heads(scores: torch.Tensor) -> list[tuple[int, int, float]]:
    """Every head as (layer, head, score), highest score first (ties: lower layer, then head); heads
    not scored (NaN: outside an exact sweep's shortlist) last."""
    layers, heads = scores.shape
    cells = [(l, h, float(scores[l, h])) for l in range(layers) for h in range(heads)]
    return sorted(cells, key=lambda cell: (math.isnan(cell[2]), -cell[2] if not math.isnan(cell[2]) else 0.0,
                                           cell[0], cell[1]))


def top_heads(scores: torch.Tensor, fraction: float) -> list[Head]:
    """The k = max(1, round(fraction * L * H)) highest-scoring heads as (layer, head), best first."""
    return [(l, h) for l, h, _ in rank_heads(scores)[: top_k(scores.numel(), fraction)]]


def top_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float) -> float:
    """|top(a) ∩ top(b)| / k at `fraction`."""
    k = top_k(a.numel(), fraction)
    return len(set(top_heads(a, fraction)) & set(top_heads(b, fraction))) / k


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rho over the heads both scored; None when either ranking is constant there."""
    a, b = a.flatten().double(), b.flatten().double()
    both = ~(a.isnan() | b.isnan())
    a, b = a[both], b[both]
    if a.numel() < 2:
        return None
    if bool((a == a[0]).all()) or bool((b == b[0]).all()):
        return None
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def every_head(layers: int, heads: int) -> list[Head]:
    return [(l, h) for l in range(layers) for h in range(heads)]


def shortlist(rankings: Sequence[Ranking], fraction: float, exact_sweep: str = "shortlist") -> list[Head] | None:
    """The heads the exact sweeps score: None (every head) with `exact_sweep` "full" or on models of at
    most FULL_SWEEP_HEADS heads; else `plan.shortlist_size` heads taken from the cheap rankings in turn,
    best first (so it holds each ranking's top k x SHORTLIST_FACTOR, deeper where they agree), in
    layer order. The sweeps then score these exactly by the same objective."""
    if exact_sweep not in EXACT_SWEEPS:
        raise ModarbError(f"unknown exact sweep {exact_sweep!r}; choose one of {', '.join(EXACT_SWEEPS)}")
    layers, heads = rankings[0].scores.shape
    num_heads = layers * heads
    size = shortlist_size(num_heads, top_k(num_heads, fraction), exact_sweep)
    if size == num_heads:
        return None
    chosen: list[Head] = []
    for cells in zip(*(ranking.ranked for ranking in rankings)):
        for l, h, _ in cells:
            if (l, h) not in chosen and len(chosen) < size:
                chosen.append((l, h))
    return sorted(chosen)


# --- the three methods -------------------------------------------------------------------------
@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Weights stop requiring grad for the block: only the gates get gradients (no memory for weight grads)."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def _ones_gates(model: nn.Module, requires_grad: bool) -> torch.Tensor:
    layout = locate_heads(model)
    return torch.ones(layout.num_layers, layout.num_heads, device=model.device, requires_grad=requires_grad)


def attribution_scores(model: nn.Module, batches: Sequence[DocBatch], progress: bool = True) -> Ranking:
    """Gradient x activation: estimated drop of the mean logit difference when each head is blocked."""
    start = time.perf_counter()
    gates = _ones_gates(model, requires_grad=True)
    rows = 0
    with frozen(model):
        for batch in tqdm(batches, desc="attribution", unit="batch", disable=not progress):
            with gate_heads(model, gates):
                difference = logit_difference(model, batch)
            difference.sum().backward()
            rows += len(batch)
    return Ranking("attribution", gates.grad.detach().double().cpu() / rows, 2 * len(batches),
                   time.perf_counter() - start)


@torch.no_grad()
def ablation_scores(model: nn.Module, batches: Sequence[DocBatch], progress: bool = True,
                    heads: Sequence[Head] | None = None) -> Ranking:
    """Exact sweep: the drop of the mean logit difference with each head (of `heads`; default all)
    blocked in turn; heads not swept score NaN."""
    start = time.perf_counter()
    layout = locate_heads(model)
    heads = every_head(layout.num_layers, layout.num_heads) if heads is None else list(heads)
    drops = torch.full((layout.num_layers, layout.num_heads), math.nan, dtype=torch.float64)
    for l, h in heads:
        drops[l, h] = 0.0
    rows = 0
    with tqdm(total=len(batches) * len(heads), desc="ablation", unit="head", disable=not progress) as bar:
        for batch in batches:
            clean = resumable(model, batch.inputs, {l for l, _ in heads})  # each block resumes at its layer
            base = following_scores(clean.logits, batch)[0]
            for l, h in heads:
                with scale_heads(model, {(l, h): 0.0}):
                    drops[l, h] += float((base - following_scores(clean.last_logits(l), batch)[0]).double().sum())
                bar.update()
            rows += len(batch)
    details = {} if len(heads) == drops.numel() else {"exact_heads": [list(head) for head in heads]}
    return Ranking("ablation", drops / rows, len(batches) * (len(heads) + 1), time.perf_counter() - start, details)


def selective_scores(objective: Objective, progress: bool = True, heads: Sequence[Head] | None = None) -> Ranking:
    """Each head (of `heads`; default all) blocked alone, scored by the objective (see selective.py)."""
    start = time.perf_counter()
    values, terms = selective_sweep(objective, progress, heads)
    passes = objective.forwards * (int((~values.isnan()).sum()) + 1)
    details = {"terms": terms} | ({} if heads is None else {"exact_heads": [list(head) for head in heads]})
    return Ranking("selective", values, passes, time.perf_counter() - start, details)


def learned_mask_scores(
    model: nn.Module,
    follow_batches: Sequence[DocBatch],
    control_batches: Sequence[DocBatch],
    options: LearnedMaskOptions = LearnedMaskOptions(),
    seed: int = 0,
    progress: bool = True,
    fraction: float = 0.05,
    objective: Objective | None = None,
) -> Ranking:
    """The k-head block (k = top `fraction` of heads) that the learned mask finds (learned_mask.py).

    Scores: 1 + closedness for the k heads it chose (so they rank first), closedness (the largest
    P(gate < 1) any start ended with) for the rest.
    """
    if not follow_batches or not control_batches:
        raise ModarbError("the learned mask needs follow docs and control docs; pass docs of all four task kinds")
    start = time.perf_counter()
    with frozen(model):
        objective = objective or Objective(model, follow_batches, control_batches, options.control)
        k = top_k(objective.shape[0] * objective.shape[1], fraction)
        search = learned_mask(objective, k, options, seed, progress)
    details = {
        "options": asdict(options),
        "seed": seed,
        "k": k,
        "found": [list(h) for h in search.heads],
        "found_objective": search.objective,
        "starts": search.starts,
        "refined_sets": search.refined_sets,
    }
    return Ranking("learned", search.scores(), search.passes, time.perf_counter() - start, details)


def objective_by_ranking(objective: Objective, rankings: dict[str, Ranking], fraction: float,
                         exhaustive: dict | None) -> dict[str, Any]:
    """The objective and each term at every ranking's top-k set (and the exhaustive optimum)."""
    by_ranking = {method: {"heads": [list(h) for h in top_heads(r.scores, fraction)],
                           **objective.at(top_heads(r.scores, fraction))} for method, r in rankings.items()}
    if exhaustive is not None:
        by_ranking["exhaustive"] = {"heads": exhaustive["heads"], **exhaustive["objective"]}
    best = max((m for m in by_ranking if m != "exhaustive"), key=lambda m: by_ranking[m]["value"])
    return {
        "definition": "value = following_drop - control_weight * sum(max(0, control drop)); following_drop = "
        "1 - P_F(blocked) / P_F(open), P_F the mean binary-normalised first-token following probability on the "
        "follow docs; control drop = open - blocked mean probability of the correct first answer token",
        "control_weight": objective.control_weight,
        "split": SHAPES_SPLIT,
        "open": objective.open,
        "by_ranking": by_ranking,
        "best": best,
    }


# --- all together ----------------------------------------------------------------------------
def split_docs(docs: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(follow docs, control docs) by task kind."""
    follow = [d for d in docs if d.get("kind") in FOLLOW_KINDS]
    control = [d for d in docs if d.get("kind") in CONTROL_KINDS]
    if not follow:
        raise ModarbError(f"no follow docs to score: give docs of kind {' or '.join(FOLLOW_KINDS)}")
    return follow, control


def identify_batches(
    model: nn.Module,
    follow_batches: Sequence[DocBatch],
    control_batches: Sequence[DocBatch] = (),
    *,
    fraction: float = 0.05,
    exact: bool = True,
    learned: bool = True,
    learned_options: LearnedMaskOptions = LearnedMaskOptions(),
    response_heads: int = 3,
    seed: int = 0,
    progress: bool = True,
    exhaustive: bool = False,
    exact_sweep: str = "shortlist",
) -> IdentifyResult:
    """The rankings on already-encoded batches (random inputs work too: the 7B benchmark uses them).

    With control batches also the selective sweep (with `exact`), the objective at every ranking's
    top set and, with `exhaustive`, the optimum over all k-head sets (small models only). Then the
    gate-response curves of up to `response_heads` top heads of each ranking (0: none).
    """
    check_fraction(fraction)
    torch.manual_seed(seed)
    objective = Objective(model, follow_batches, control_batches, learned_options.control) if control_batches \
        else None
    rankings = {"attribution": attribution_scores(model, follow_batches, progress)}
    if learned:  # before the exact sweeps: its ranking helps pick their shortlist
        rankings["learned"] = learned_mask_scores(model, follow_batches, control_batches, learned_options, seed,
                                                  progress, fraction, objective)
    if exact:
        swept = shortlist(list(rankings.values()), fraction, exact_sweep)
        rankings["ablation"] = ablation_scores(model, follow_batches, progress, swept)
        if objective is not None:
            rankings["selective"] = selective_scores(objective, progress, swept)
    rankings = {method: rankings[method] for method in METHODS if method in rankings}
    optimum = None
    if exhaustive:
        if objective is None:
            raise ModarbError("the exhaustive search needs control docs; add them or skip it")
        optimum = exhaustive_sets(objective, top_k(objective.shape[0] * objective.shape[1], fraction), MAX_SETS,
                                  progress)
    heads = curve_heads(rankings, fraction, response_heads)
    slopes = rankings["attribution"].scores
    curves = [curve | describe(curve, GATES, float(slopes[tuple(curve["head"])]))
              for curve in gate_response(model, follow_batches, heads, GATES, progress)] if heads else []
    return IdentifyResult(
        rankings=rankings,
        fraction=fraction,
        n_follow_docs=sum(len(b) for b in follow_batches),
        n_control_docs=sum(len(b) for b in control_batches),
        gate_response=curves,
        objective=objective_by_ranking(objective, rankings, fraction, optimum) if objective is not None else {},
        exhaustive=optimum,
    )


def curve_heads(rankings: dict[str, Ranking], fraction: float, per_ranking: int) -> list[Head]:
    """The top min(k, per_ranking) heads of each ranking, in order of first appearance (exact sweep first)."""
    heads: list[Head] = []
    for method in ("ablation", "attribution", "selective", "learned"):
        if method in rankings:
            for head in top_heads(rankings[method].scores, fraction)[:per_ranking]:
                if head not in heads:
                    heads.append(head)
    return heads


def identify(
    model: nn.Module,
    processor,
    docs: Sequence[dict],
    *,
    fraction: float = 0.05,
    batch_size: int = 16,
    exact: bool = True,
    learned: bool = True,
    learned_options: LearnedMaskOptions = LearnedMaskOptions(),
    response_heads: int = 3,
    seed: int = 0,
    progress: bool = True,
    exhaustive: bool = False,
    exact_sweep: str = "shortlist",
) -> IdentifyResult:
    """Score every head of `model` on `docs` (follow docs; control docs too for the objective-based rankings)."""
    check_fraction(fraction)
    if batch_size < 1:
        raise ModarbError(f"batch size {batch_size} must be at least 1")
    follow, control = split_docs(docs)
    if learned and not control:
        raise ModarbError(f"the learned mask needs control docs ({' and '.join(CONTROL_KINDS)}); add them or skip it")
    follow_batches = list(iter_batches(model, processor, follow, batch_size))
    control_batches = list(iter_batches(model, processor, control, batch_size)) if control else []
    return identify_batches(
        model, follow_batches, control_batches, fraction=fraction, exact=exact, learned=learned,
        learned_options=learned_options, response_heads=response_heads, seed=seed, progress=progress,
        exhaustive=exhaustive, exact_sweep=exact_sweep,
    )


# --- the output folder -------------------------------------------------------------------------
SCORE_LABELS = {
    "attribution": "estimated drop of logit diff F - C",
    "ablation": "drop of logit diff F - C",
    "selective": "following drop - control drops",
    "learned": "found set: 1 + closedness; others: closedness",
}


def spec_name(fraction: float) -> str:
    """spec_top<percent>.json, e.g. spec_top5.json for the top 5% of heads."""
    return f"spec_top{fraction * 100:g}.json"


def command_line(model: nn.Module, config: IdentifyConfig, out: Path) -> str:
    """The `modarb identify` command that repeats the run, every option explicit (device and dtype: the model's)."""
    parts = ["modarb identify"] + ([f"--model {config.model}"] if config.model else [])
    parts += [f"--out {out}", f"--top {config.top:g}", f"--method {config.method}", f"--n-items {config.n_items}",
              f"--batch-size {config.batch_size}", f"--device {model.device.type}",
              f"--dtype {str(model.dtype).removeprefix('torch.')}", f"--seed {config.seed}",
              f"--learned-steps {config.learned_steps}", f"--curve-heads {config.curve_heads}"]
    parts += [f"--exact-sweep {config.exact_sweep}"] * (config.exact_sweep != IdentifyConfig.exact_sweep)
    parts += [flag for flag, on in (("--no-exact", not config.exact), ("--no-learned", not config.learned),
                                    ("--exhaustive", config.exhaustive)) if on]
    return " ".join(parts)


METRIC = ("logit difference log p(F) - log p(C) of the first answer token at the last position, on follow_image and "
          "follow_text docs; score = drop of its mean when the head is blocked (attribution, ablation); selective and "
          "learned: the objective (see 'objective')")


@dataclass(frozen=True)
class IdentifyRun:
    """One identify run: the rankings, what made them and the spec written from them; identify.json is `to_json()`."""

    config: IdentifyConfig
    result: IdentifyResult
    fingerprint: ModelFingerprint
    provenance: dict[str, Any]  # the spec's: method, fraction, split, items, seeds, command (and MC²'s data record)
    spec: InterventionSpec  # the `method` ranking's top heads blocked
    figures: tuple[str, ...]  # the PNG files written beside identify.json
    seconds: float

    @property
    def command(self) -> str:
        return self.provenance["command"]

    @property
    def spec_file(self) -> str:
        return spec_name(self.config.top)

    @property
    def spec_heads(self) -> list[Head]:
        return [(scale.layer, scale.head) for scale in self.spec.heads]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "model_name": self.config.model or self.fingerprint.name,
            "model": asdict(self.fingerprint),
            **self.provenance,
            "batch_size": self.config.batch_size,
            "metric": METRIC,
            "spec": self.spec_file,
            "spec_heads": [list(head) for head in self.spec_heads],
            **self.result.to_dict(),
            "seconds": round(self.seconds, 3),
        }


def run_identify(
    model: nn.Module,
    processor,
    out: str | Path | OutputFolder,
    config: IdentifyConfig,
    *,
    progress: bool = True,
    docs: Sequence[dict] | None = None,
    data: dict[str, Any] | None = None,
) -> IdentifyRun:
    """Rank every head on `config.n_items` shapes validation items (or on `docs`, e.g. MC²'s analysis half,
    described by `data`); write `out` (a folder, or a staged `OutputFolder`: the command then names
    its final folder); return the run.

    Writes heads_<method>.png per ranking, gate_response.png (how the top `curve_heads` heads of
    each ranking act as their gate goes from 0 to 8), spec_top<percent>.json (the `method` ranking's top heads
    blocked, for `hf-modarb` with --model_args spec=...) and, last, identify.json: every file goes
    through a temporary name and a rename, so identify.json exists only once the rest is written.
    The test split stays untouched: it is for scoring the interventions with lm-eval.
    """
    from interventions.analysis.gate_response import plot_gate_response
    from interventions.analysis.heatmap import plot_head_scores
    from modarb_tasks.files import write_json

    top, method = check_fraction(config.top), config.method
    if method not in METHODS:
        raise ModarbError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not {"ablation": config.exact, "selective": config.exact, "learned": config.learned}.get(method, True):
        raise ModarbError(f"method {method!r} needs its ranking; do not skip it")
    layout = locate_heads(model)
    heads_total = layout.num_layers * layout.num_heads
    if config.exhaustive and set_count(heads_total, top_k(heads_total, top)) > MAX_SETS:
        raise ModarbError(f"--exhaustive would score {set_count(heads_total, top_k(heads_total, top)):,} head sets "
                          f"(more than {MAX_SETS:,}); it is for small models: drop --exhaustive")
    start = time.perf_counter()
    result = identify(
        model, processor, shapes_docs(config.n_items) if docs is None else docs, fraction=top,
        batch_size=config.batch_size, exact=config.exact, learned=config.learned,
        learned_options=LearnedMaskOptions(steps=config.learned_steps), response_heads=config.curve_heads,
        seed=config.seed, progress=progress, exhaustive=config.exhaustive, exact_sweep=config.exact_sweep,
    )
    out = OutputFolder.of(out)
    fingerprint = model_fingerprint(model)
    command = command_line(model, config, out.final)
    provenance = {"method": method, "fraction": top, "split": SHAPES_SPLIT, "n_items": config.n_items,
                  "data_seed": SHAPES_SEED, "seed": config.seed, "command": command}
    if data is not None:  # MC²: the analysis half of the named file; the command names the data flags
        provenance |= {"split": data["analysis_half"], "data": data, "command": command + data.get("flags", "")}
    spec = InterventionSpec.scaling(fingerprint, top_heads(result.rankings[method].scores, top), 0.0, provenance)
    out.work.mkdir(parents=True, exist_ok=True)
    spec.save(out.work / spec_name(top))
    figures = []
    name = config.model or fingerprint.name or fingerprint.family
    for ranking_name, ranking in result.rankings.items():
        figures.append(plot_head_scores(
            ranking.scores, out.work / f"heads_{ranking_name}.png", boxed=top_heads(ranking.scores, top),
            label=SCORE_LABELS[ranking_name], title=f"{ranking_name}: {name}\n(top {top * 100:g}% boxed)",
        ))
    if result.gate_response:
        slopes = {tuple(c["head"]): c["attribution_estimate"] for c in result.gate_response}
        figures.append(plot_gate_response(result.gate_response, GATES, out.work / "gate_response.png", slopes,
                                          title=f"gate response: {name}"))
    run = IdentifyRun(config, result, fingerprint, provenance, spec, tuple(sorted(path.name for path in figures)),
                      time.perf_counter() - start)
    write_json(out.work / "identify.json", run.to_json(), indent=1)
    return run
