"""`modarb reproduce`: the Instruction Anchor paper's experiments on one model, in one command.

Baseline scores -> information flow -> head identification -> blocking curve (top vs random)
-> amplification (learned gates, and a fixed-alpha sweep beside it) -> residual steering (optional) -> a report
folder (Markdown, figures, summary.json, the specs and the lm-eval results of every run, with the command that
recomputes each).
Identification, flow, the amplification gates, the sweep's alpha and the steering directions, layers and alphas
use the validation split (MC²: the
analysis half); every score comes from lm-eval on the test split (MC²: the test half), so nothing is
chosen on the items it is judged on. `data` picks shapes, mc2 or mc2_paper:<model>
(interventions.analysis.data).
"""

from __future__ import annotations

import time
from contextlib import ExitStack

from tqdm import tqdm

from interventions.analysis import controls, report
from interventions.analysis.evaluation import Evaluator, paired_vs, quiet_lm_eval
from interventions.analysis.amplify import choose_alpha, learn_amplification
from interventions.analysis.experiments import (
    amplification_sweep,
    amplify_gates,
    block_each_ranking,
    blocking_curve,
)
from interventions.analysis.flow_run import FlowRun, run_flow
from interventions.analysis.gate_response import GATES
from interventions.analysis.identify import METHODS, IdentifyRun, frozen, run_identify
from interventions.analysis.steer import (
    SteerOptions,
    choose_steering,
    rates_on_test,
    score_steering,
    validation_objective,
    value_on_test,
)
from interventions.analysis.defaults import FlowConfig, IdentifyConfig, ReproduceConfig, top_k
from interventions.analysis.objective import Objective
from interventions.analysis.plan import H100_SECONDS_PER_LAYER_TOKEN, Phase, WorkCounter
from modarb_tasks.catalog import SCORES as SCORE_KEYS
from modarb_tasks.catalog import Metric, pooled_mf_ratio
from modarb_tasks.errors import ModarbError
from modarb_tasks.outdir import staged
from interventions.mechanism.spec import model_fingerprint


def reproduce(config: ReproduceConfig) -> dict:
    """Run every experiment and write the report folder; returns summary.json's content."""
    if not 0 < config.top < 1 or config.top not in config.fractions:
        raise ModarbError(f"--top {config.top} must be one of the blocking fractions {list(config.fractions)}")
    from interventions.analysis.data import (
        CONTROL_KINDS,
        FOLLOW_KINDS,
        analysis_docs,
        data_record,
        resolve_data,
    )
    from interventions.analysis.plan import read_model
    from interventions.model.lm import ModarbVLM

    source = resolve_data(config.data, config.mc2_json, config.mc2_images,
                          uses=[("analysis", config.analysis_items), ("test", config.limit)])
    quiet_lm_eval()
    control_set = (controls.resolve(config.controls, config.include_path, config.controls_limit, source.tasks().metadata)
                   if config.controls else None)  # bad task names and uncached data: before any model loads
    model_config, processor = read_model(config.model, config.trust_remote_code)  # bad data: before any weights load
    flow_docs, flow_dropped = analysis_docs(source, model_config, processor.tokenizer, config.analysis_items,
                                            FOLLOW_KINDS, flow_config(config).layouts)
    started = time.perf_counter()
    with staged(config.out) as out, ExitStack() as hooks:
        lm = ModarbVLM(pretrained=config.model, batch_size=config.batch_size, device=config.device, dtype=config.dtype,
                       trust_remote_code=config.trust_remote_code, config=model_config, processor=processor)
        counter = hooks.enter_context(WorkCounter(lm.model))  # the work each phase actually did, for the report
        fingerprint = model_fingerprint(lm.model)
        model_arg = ",".join([f"pretrained={config.model}"] * bool(config.model)
                             + ["trust_remote_code=True"] * config.trust_remote_code)
        evaluator = Evaluator(lm, model_arg, out.work / "runs", config.limit, config.batch_size, out.final / "runs",
                              tasks=source.tasks(), use_cache=config.use_cache,
                              task_manager=control_set.task_manager if control_set else None)
        identify_docs, identify_dropped = analysis_docs(source, lm.model.config, lm.tokenizer, config.analysis_items,
                                                        (*FOLLOW_KINDS, *CONTROL_KINDS))
        records = {name: data_record(source, dropped, len(docs)) if source.is_mc2 or dropped else None
                   for name, docs, dropped in (("flow", flow_docs, flow_dropped),
                                               ("identify", identify_docs, identify_dropped))}
        other_rankings = len(METHODS) - 1  # their top sets are blocked beside the chosen ranking's
        steer_steps = 2 * config.steers
        steps = tqdm(total=6 + other_rankings + len(config.fractions) * (1 + config.draws) + len(config.alphas)
                     + steer_steps,
                     desc="reproduce", unit="step")

        def progress(what: str) -> None:
            steps.set_postfix_str(what)
            steps.update(1)

        progress("baseline")
        baseline = evaluator.run("baseline", None)
        progress("flow")
        with counter.phase("flow"):
            flow = run_flow(lm.model, lm.processor, out / "flow", flow_config(config), docs=flow_docs, data=records["flow"])
        progress("identify")
        with counter.phase("identify"):
            identified = run_identify(lm.model, lm.processor, out / "identify", identify_config(config),
                                      docs=identify_docs, data=records["identify"])
        ranking = identified.result.ranked_heads(config.method)
        curve = blocking_curve(evaluator, fingerprint, ranking, config.fractions, config.draws, config.seed, progress)
        top_heads = ranking[: top_k(fingerprint.num_layers * fingerprint.num_heads, config.top)]
        others = {method: identified.result.ranked_heads(method)
                  for method in identified.result.rankings if method != config.method}
        by_ranking = block_each_ranking(evaluator, fingerprint, others, config.top, progress)
        progress("amplification gates (validation)")
        with frozen(lm.model):
            with counter.phase("amplification (validation)"):
                objective = _validation_objective(lm, config, source)
                learned = learn_amplification(objective, 2 * len(top_heads), progress=False)
                alpha = choose_alpha(objective, top_heads, list(config.alphas))
            if config.steers:
                progress("steering directions (validation)")
                with counter.phase("steering (validation)"):
                    steering = choose_steering(objective, SteerOptions())
        progress("amplify (learned gates)")
        amplified = amplify_gates(evaluator, fingerprint, dict(zip(learned.heads, learned.gates)),
                                  baseline, {"name": "amplify (learned gates)", "method": "learned amplification",
                                             "split": "validation"})
        amplify = amplification_sweep(evaluator, fingerprint, top_heads, config.alphas, baseline, progress=progress)
        if config.steers:
            progress("steer (test)")
            steered = score_steering(evaluator, baseline, fingerprint, steering,
                                     against={"amplify_learned": amplified.run})
        summary = _summary(config, fingerprint, baseline, curve, (amplified, learned, amplify, alpha), top_heads,
                           by_ranking, identified, flow, seconds=time.perf_counter() - started)
        if config.steers:
            summary["steer"] = steered | {"comparison": intervention_comparison(summary, steered)}
        summary["work"] = work_summary(counter)
        summary["data"] = data_summary(source, {"flow": flow_dropped, "identify": identify_dropped}, baseline,
                                       at_fraction(curve, config.top).top)
        if control_set is not None:
            steps.set_postfix_str("controls")  # part of the report step: no step of its own
            scorer = Evaluator(lm, model_arg, out.work / "runs" / "controls", control_set.limit, config.batch_size,
                               out.final / "runs" / "controls", tasks=source.tasks(), use_cache=config.use_cache,
                               include_path=control_set.include_path, task_manager=control_set.task_manager)
            runs = controls.reported_runs(baseline, (config.method, at_fraction(curve, config.top).top), by_ranking,
                                          amplified, amplify, curve if config.controls_on_curve else ())
            summary["preserved_ability"] = controls.score_controls(scorer, control_set, runs)
            summary["work"] = work_summary(counter)  # counted again: the controls' runs are lm-eval work too
        progress("report")
        summary = report.checked(summary)
        report.write(out.work, summary, flow.to_json())
        steps.close()
    return summary


def flow_config(config: ReproduceConfig) -> FlowConfig:
    """flow's part of a reproduce: every layout, on the analysis items."""
    return FlowConfig(model=config.model, window=config.window, n_items=config.analysis_items,
                      batch_size=config.batch_size, device=config.device, dtype=config.dtype,
                      trust_remote_code=config.trust_remote_code)


def identify_config(config: ReproduceConfig) -> IdentifyConfig:
    """identify's part of a reproduce: its ranking and fraction, on the analysis items."""
    return IdentifyConfig(model=config.model, top=config.top, method=config.method, learned_steps=config.learned_steps,
                          n_items=config.analysis_items, batch_size=config.batch_size, seed=config.seed,
                          exact_sweep=config.exact_sweep, device=config.device, dtype=config.dtype,
                          trust_remote_code=config.trust_remote_code)


def work_summary(counter: WorkCounter) -> dict:
    """Forwards and decoder layer-tokens each phase ran (lm-eval: every run together), and the
    H100 minutes they come to (interventions.analysis.plan)."""
    phases = {p.name: p for p in counter.phases}
    rest = Phase("lm-eval runs", counter.forwards - sum(p.forwards for p in phases.values()), 0,
                 counter.layer_tokens - sum(p.layer_tokens for p in phases.values()))
    return {p.name: p.to_json() for p in [*phases.values(), rest]} | {
        "h100_seconds_per_layer_token": H100_SECONDS_PER_LAYER_TOKEN}


def at_fraction(curve, fraction: float):
    return next(point for point in curve if point.fraction == fraction)


def data_summary(source, dropped: dict[str, dict[str, int]], baseline, block_top) -> dict:
    """Which data and halves, what the analyses dropped and why, and MF ratio per question type
    (MC²: its task type, as the paper's tables) at baseline and under the top-heads block."""
    return source.describe() | {
        "scored_tasks": list(source.tasks().follow + source.tasks().controls),
        "dropped": dropped,
        "mf_ratio_by_type": {"baseline": mf_ratio_by_type(baseline), "block_top": mf_ratio_by_type(block_top)},
    }


def mf_ratio_by_type(run) -> dict[str, dict]:
    """question type -> {mf_ratio (pooled over both follow tasks' items, as the catalog pools), n per follow task}."""
    by_type: dict[str, dict[str, list[float]]] = {}
    for task, follows in run.follow_by_doc.items():
        for doc, follow in follows.items():
            by_type.setdefault(run.type_by_doc[task][doc], {}).setdefault(task, []).append(follow)
    return {kind: {"mf_ratio": pooled_mf_ratio(*(Metric(_mean(values), None, len(values))
                                                 for values in tasks.values())).value,
                   "n": {task: len(values) for task, values in tasks.items()}}
            for kind, tasks in sorted(by_type.items())}


def _validation_objective(lm, config: ReproduceConfig, source) -> Objective:
    """The first-token objective over the validation items (MC²: the analysis half) that fit the amplification
    gates, choose the sweep's alpha and fit the steering directions.

    More items than identify uses: the gates are fit to the failed items, and 48 items have only ~10.
    """
    from interventions.analysis.data import CONTROL_KINDS, FOLLOW_KINDS, analysis_docs

    docs, _ = analysis_docs(source, lm.model.config, lm.tokenizer, config.amplify_items, (*FOLLOW_KINDS, *CONTROL_KINDS))
    return validation_objective(lm, docs, config.batch_size)


def intervention_comparison(summary: dict, steered: dict) -> dict:
    """Amplification (learned gates; one alpha on the top heads) and each steering setting ranked on the test split
    by the value that chose them on validation (restored share - 2 x broken share - control drops)."""
    base, amplify = summary["baseline"], summary["amplify"]
    rows = [{"intervention": "amplify (learned gates)", "rates": amplify | {"failed": amplify["failed_items"],
                                                                             "followed": amplify["followed_items"]}},
            {"intervention": f"amplify top heads x{amplify['best_alpha']:g}", "rates": amplify["sweep_at_best_alpha"]}]
    rows += [{"intervention": f"steer {s['direction']} L{s['layer']} x{s['alpha']:g}", "rates": s["test"]}
             for s in steered["settings"]]
    ranked = [{"intervention": row["intervention"], "value": value_on_test(row["rates"], base),
               **{key: row["rates"][key] for key in COMPARED}} for row in rows]
    return {"rows": ranked, "best": max(ranked, key=lambda row: row["value"])["intervention"]}


COMPARED = ("restored", "failed", "restoration_rate", "broken", "followed", "broken_rate", "visual_control",
            "language_control", "other")  # what the comparison shows of each intervention's test rates


def _amplify_point(point) -> dict:
    return rates_on_test(point) | {"command": point.run.command}


def _summary(config: ReproduceConfig, fingerprint, baseline, curve, amplification, top_heads, by_ranking,
             identified: IdentifyRun, flow: FlowRun, seconds: float) -> dict:
    """summary.json's content from the typed results (its checks are added by `report.checked`)."""
    amplified, learned, amplify, alpha = amplification
    result = identified.result
    at_top = at_fraction(curve, config.top)
    mean_random = {key: _mean(run.scores[key] for run in at_top.random) for key in SCORE_KEYS}
    at_alpha = next(point for point in amplify if point.alpha == alpha.alpha)
    return {
        "model": config.model or "modarb-organism",
        "fingerprint": fingerprint.describe(),
        "limit": config.limit,
        "baseline": _scores(baseline) | {"command": baseline.command},
        "block_top": _scores(at_top.top) | {"heads": [list(h) for h in top_heads], "command": at_top.top.command,
                                            "vs_baseline": paired_vs(baseline, at_top.top)},
        "block_top_by_ranking": {config.method: _scores(at_top.top) | {"heads": [list(h) for h in top_heads],
                                                                        "command": at_top.top.command,
                                                                        "vs_baseline": paired_vs(baseline, at_top.top)}} | {
            method: _scores(run) | {"heads": _heads(run), "command": run.command,
                                    "vs_baseline": paired_vs(baseline, run)} for method, run in by_ranking.items()},
        "block_random": mean_random | {"draws": [
            _scores(run) | {"heads": _heads(run), "command": run.command, "vs_baseline": paired_vs(baseline, run)}
            for run in at_top.random]},
        "blocking_curve": [
            {"fraction": p.fraction, "k": p.k, "top": _scores(p.top),
             "random_mean": {key: _mean(run.scores[key] for run in p.random) for key in SCORE_KEYS},
             "random": [_scores(run) for run in p.random]}
            for p in curve
        ],
        "amplify": {  # learned gates; chosen on validation, scored here on the test split
            "method": "learned",
            "heads": [list(head) for head in learned.heads],
            "gates": list(learned.gates),
            **{key: value for key, value in _amplify_point(amplified).items() if key not in ("failed", "followed")},
            "failed_items": amplified.failed,
            "followed_items": amplified.followed,
            "validation": learned.validation,
            # the fixed-alpha baseline on the top heads, alpha chosen on validation too
            "sweep_heads": [list(h) for h in top_heads],
            "best_alpha": alpha.alpha,
            "sweep_at_best_alpha": {key: value for key, value in _amplify_point(at_alpha).items() if key != "command"},
            "alpha_validation": list(alpha.validation),
            "curve": [{"alpha": p.alpha, **_amplify_point(p)} for p in amplify],
        },
        "identify": {
            "method": config.method,
            "fraction": config.top,
            "objective": result.objective.get("by_ranking", {}),  # on validation, each ranking's top set
            "objective_best": result.objective.get("best"),
            "top_overlap": result.top_overlap,
            "rank_correlation": result.rank_correlation,
            "gate_response": [{key: curve[key] for key in ("head", "exact_drop", "attribution_estimate",
                                                            "first_quarter_share", "amplify_gain", "mean")}
                              for curve in result.gate_response],
            "gates": list(GATES),
            "command": identified.command,
        },
        "flow": {"command": flow.command, "window": flow.window},
        "seconds": round(seconds, 1),
    }


def _scores(run) -> dict:
    return {key: run.scores.get(key) for key in SCORE_KEYS}


def _heads(run) -> list[list[int]]:
    return [[scale.layer, scale.head] for scale in run.spec.heads]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
