"""`modarb reproduce`: the Instruction Anchor paper's experiments on one model, in one command.

Baseline scores -> information flow -> head identification -> blocking curve (top vs random)
-> amplification (learned gates, and a fixed-alpha sweep beside it) -> a report folder (Markdown, figures, summary.json, the
specs and the lm-eval results of every run, with the command that recomputes each).
Identification, flow, the amplification gates and the sweep's alpha use the validation split;
every score comes from lm-eval on the test split, so nothing is chosen on the items it is judged on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from interventions.analysis import report
from interventions.analysis.evaluation import Evaluator, quiet_lm_eval
from interventions.analysis.amplify import choose_alpha, learn_amplification
from interventions.analysis.batches import iter_batches
from interventions.analysis.experiments import (
    amplification_sweep,
    amplify_gates,
    block_each_ranking,
    blocking_curve,
    head_count,
)
from interventions.analysis.flow_cli import run_flow
from interventions.analysis.identify import METHODS, frozen, run_identify, shapes_docs, split_docs
from interventions.analysis.learned_mask import LearnedMaskOptions
from interventions.analysis.objective import Objective
from interventions.errors import ModarbError
from interventions.spec import model_fingerprint

SCORE_KEYS = ("follow_image", "follow_text", "mf_ratio", "visual_control", "language_control")


@dataclass
class ReproduceConfig:
    model: str | None = None  # None: the bundled organism
    out: Path = Path("reports/demo")
    limit: int = 200  # test-split items per task scored by lm-eval
    batch_size: int = 64
    top: float = 0.05
    fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10, 0.15, 0.20)
    draws: int = 5
    alphas: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
    method: str = "learned"
    analysis_items: int = 48  # validation items for flow / identify / amplification (per instruction side and layout)
    learned_steps: int = LearnedMaskOptions.steps  # optimisation steps of the learned head mask, per start
    amplify_items: int = 150  # validation items that fit the amplification gates and pick the sweep's alpha
    window: int | None = None  # flow knockout window; None: the odd layer count nearest 30% of the depth
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    steps: list[str] = field(default_factory=list)


def reproduce(config: ReproduceConfig) -> dict:
    """Run every experiment and write the report folder; returns summary.json's content."""
    if not 0 < config.top < 1 or config.top not in config.fractions:
        raise ModarbError(f"--top {config.top} must be one of the blocking fractions {list(config.fractions)}")
    from interventions.lm import ModarbVLM

    started = time.perf_counter()
    quiet_lm_eval()
    work = Path(tempfile.mkdtemp(prefix=".reproduce-", dir=_parent(config.out)))
    try:
        lm = ModarbVLM(pretrained=config.model, batch_size=config.batch_size, device=config.device, dtype=config.dtype)
        fingerprint = model_fingerprint(lm.model)
        model_arg = f"pretrained={config.model}" if config.model else ""
        evaluator = Evaluator(lm, model_arg, work / "runs", config.limit, config.batch_size, Path(config.out) / "runs")
        other_rankings = len(METHODS) - 1  # their top sets are blocked beside the chosen ranking's
        steps = tqdm(total=5 + other_rankings + len(config.fractions) * (1 + config.draws) + len(config.alphas),
                     desc="reproduce", unit="step")

        def progress(what: str) -> None:
            steps.set_postfix_str(what)
            steps.update(1)

        progress("baseline")
        baseline = evaluator.run("baseline", None)
        progress("flow")
        flow = run_flow(lm.model, lm.processor, work / "flow", n_items=config.analysis_items, window=config.window,
                        batch_size=config.batch_size, model_name=config.model)
        progress("identify")
        identified = run_identify(lm.model, lm.processor, work / "identify", top=config.top, method=config.method,
                                  n_items=config.analysis_items, batch_size=config.batch_size, seed=config.seed,
                                  learned_steps=config.learned_steps, model_name=config.model)
        ranking = [tuple(head) for head in identified["rankings"][config.method]["heads"]]
        curve = blocking_curve(evaluator, fingerprint, ranking, config.fractions, config.draws, config.seed, progress)
        top_heads = ranking[: head_count(config.top, fingerprint.num_layers, fingerprint.num_heads)]
        others = {method: [tuple(head) for head in found["heads"]]
                  for method, found in identified["rankings"].items() if method != config.method}
        by_ranking = block_each_ranking(evaluator, fingerprint, others, config.top, progress)
        progress("amplification gates (validation)")
        learned, alpha = _amplification_on_validation(lm, config, top_heads)
        progress("amplify (learned gates)")
        amplified = amplify_gates(evaluator, fingerprint, {tuple(h): g for h, g in zip(learned["heads"], learned["gates"])},
                                  baseline, {"name": "amplify (learned gates)", "method": "learned amplification",
                                             "split": "validation"})
        amplify = amplification_sweep(evaluator, fingerprint, top_heads, config.alphas, baseline, progress=progress)
        steps.close()
        summary = _summary(config, fingerprint, baseline, curve, (amplified, learned, amplify, alpha), top_heads,
                           by_ranking, identified, flow, seconds=time.perf_counter() - started)
        report.write(work, summary, config)
        _relocate(work, Path(config.out))
        _replace_folder(work, config.out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _amplification_on_validation(lm, config: ReproduceConfig, top_heads) -> tuple[dict, dict]:
    """Learned gates (on twice the block set's head count) and the sweep's alpha, both on validation items.

    More items than identify uses: the gates are fit to the failed items, and 48 items have only ~10.
    """
    follow, control = split_docs(shapes_docs(config.amplify_items))
    with frozen(lm.model):
        objective = Objective(lm.model, list(iter_batches(lm.model, lm.processor, follow, config.batch_size)),
                              list(iter_batches(lm.model, lm.processor, control, config.batch_size)))
        learned = learn_amplification(objective, 2 * len(top_heads), progress=False)
    return learned, choose_alpha(objective, [tuple(h) for h in top_heads], list(config.alphas))


def _amplify_point(point) -> dict:
    return {"restored": point.restored, "failed": point.failed, "restoration_rate": point.restoration_rate,
            "broken": point.broken, "followed": point.followed, "broken_rate": point.broken_rate,
            "visual_control": point.run.scores.get("visual_control"),
            "language_control": point.run.scores.get("language_control"), "command": point.run.command}


def _summary(config, fingerprint, baseline, curve, amplification, top_heads, by_ranking, identified, flow,
             seconds) -> dict:
    amplified, learned, amplify, alpha = amplification
    at_top = next(point for point in curve if point.fraction == config.top)
    mean_random = {key: _mean(run.scores[key] for run in at_top.random) for key in SCORE_KEYS}
    at_alpha = next(point for point in amplify if point.alpha == alpha["alpha"])
    return {
        "model": config.model or "modarb-organism",
        "fingerprint": fingerprint.describe(),
        "limit": config.limit,
        "baseline": _scores(baseline) | {"command": baseline.command},
        "block_top": _scores(at_top.top) | {"heads": [list(h) for h in top_heads], "command": at_top.top.command},
        "block_top_by_ranking": {config.method: _scores(at_top.top) | {"heads": [list(h) for h in top_heads],
                                                                        "command": at_top.top.command}} | {
            method: _scores(run) | {"heads": _heads(run), "command": run.command} for method, run in by_ranking.items()},
        "block_random": mean_random | {"draws": [
            _scores(run) | {"heads": _heads(run), "command": run.command} for run in at_top.random]},
        "blocking_curve": [
            {"fraction": p.fraction, "k": p.k, "top": _scores(p.top),
             "random_mean": {key: _mean(run.scores[key] for run in p.random) for key in SCORE_KEYS},
             "random": [_scores(run) for run in p.random]}
            for p in curve
        ],
        "amplify": {  # learned gates; chosen on validation, scored here on the test split
            "method": "learned",
            "heads": learned["heads"],
            "gates": learned["gates"],
            **{key: value for key, value in _amplify_point(amplified).items() if key not in ("failed", "followed")},
            "failed_items": amplified.failed,
            "followed_items": amplified.followed,
            "validation": learned["validation"],
            # the fixed-alpha baseline on the top heads, alpha chosen on validation too
            "sweep_heads": [list(h) for h in top_heads],
            "best_alpha": alpha["alpha"],
            "sweep_at_best_alpha": {key: value for key, value in _amplify_point(at_alpha).items() if key != "command"},
            "alpha_validation": alpha["validation"],
            "curve": [{"alpha": p.alpha, **_amplify_point(p)} for p in amplify],
        },
        "identify": {
            "method": config.method,
            "fraction": config.top,
            "objective": identified["objective"].get("by_ranking", {}),  # on validation, each ranking's top set
            "objective_best": identified["objective"].get("best"),
            "top_overlap": identified["top_overlap"],
            "rank_correlation": identified["rank_correlation"],
            "gate_response": [{key: curve[key] for key in ("head", "exact_drop", "attribution_estimate",
                                                            "first_quarter_share", "amplify_gain", "mean")}
                              for curve in identified["gate_response"]["heads"]],
            "gates": identified["gate_response"]["gates"],
            "command": identified["command"],
        },
        "flow": {"command": flow["command"], "window": flow["window"]},
        "seconds": round(seconds, 1),
    }


def _scores(run) -> dict:
    return {key: run.scores.get(key) for key in SCORE_KEYS}


def _heads(run) -> list[list[int]]:
    spec = json.loads(run.spec_file.read_text())
    return [[h["layer"], h["head"]] for h in spec["heads"]]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _relocate(work: Path, out: Path) -> None:
    """Name the final report folder, not the work folder, in the commands the reports record."""
    for path in [*work.glob("*.json"), *work.glob("*.md"), *work.glob("*/*.json")]:
        text = path.read_text()
        if str(work) in text:
            path.write_text(text.replace(str(work), str(out)))


def _parent(out: Path) -> Path:
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _replace_folder(work: Path, out: Path) -> None:
    """Swap the finished report into place, so a failed run never leaves a half report."""
    out = Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old)
    else:
        work.rename(out)
