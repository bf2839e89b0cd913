"""Residual steering directions fitted and chosen on validation, scored by lm-eval on test.

Directions, one per decoder layer l, from the residual stream `hidden_states[l + 1]` (the output of
layer l, where steering adds) averaged over the chosen positions of each follow doc:
- `modality`: mean over follow-image docs - mean over follow-text docs (which modality the
  instruction names; the sign of alpha picks the side);
- `following`: mean over the docs the plain model follows - mean over those it fails (first-token
  P_F >= 0.5, as amplification counts them);
- `modality_pc1` (optional): the first principal component of the follow docs' residuals (an SVD),
  signed to agree with `modality`.
A vector is the raw difference (PC1: scaled to the modality difference's norm), so alpha = 1 moves
an average doc by about that difference.

Layer and alpha are chosen per direction on validation by amplification's value (restored share -
2 x broken share - control drops, `amplify.rates`); the test split then scores each
chosen setting through lm-eval against the baseline, item by item, with the share of `other`
answers (matching neither side: lost fluency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from interventions.analysis.amplify import AmplifyOptions, best_of, chosen
from interventions.analysis.batches import DocBatch
from interventions.analysis.objective import Objective
from interventions.mechanism.spec import InterventionSpec, ModelFingerprint, SteeringSpec
from interventions.mechanism.steer import steer
from modarb_tasks.errors import ModarbError

DEFAULT_DIRECTIONS = ("modality", "following")  # of defaults.STEER_DIRECTIONS


@dataclass(frozen=True)
class SteerOptions:
    directions: tuple[str, ...] = DEFAULT_DIRECTIONS
    alphas: tuple[float, ...] = (-1.0, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1.0)
    layers: tuple[int, ...] | None = None  # None: every decoder layer
    positions: str = "last"
    broken_weight: float = AmplifyOptions.broken_weight


def _position_mask(batch: DocBatch, positions: str) -> torch.Tensor:
    """Bool [B, S]: the positions a direction is averaged over (left padding: "last" is the final column)."""
    if positions == "all":
        return batch.inputs["attention_mask"].bool()
    mask = torch.zeros_like(batch.inputs["attention_mask"], dtype=torch.bool)
    mask[:, -1] = True
    return mask


@torch.no_grad()
def residuals(model: nn.Module, batches: Sequence[DocBatch], positions: str) -> torch.Tensor:
    """[docs, layers, hidden]: each doc's residual after every decoder layer, averaged over `positions`."""
    rows = []
    for batch in batches:
        hidden = model(**batch.inputs, use_cache=False, output_hidden_states=True).hidden_states[1:]
        mask = _position_mask(batch, positions).to(hidden[0].device)
        weights = mask.float() / mask.sum(1, keepdim=True)
        rows.append(torch.stack([torch.einsum("bs,bsh->bh", weights, layer.float()) for layer in hidden], 1))
    return torch.cat(rows).cpu()


def fit_directions(objective: Objective, positions: str, directions: Sequence[str]) -> dict[str, torch.Tensor]:
    """direction name -> [layers, hidden] vectors (see the module docstring); a direction whose two groups
    are not both present (e.g. no failed doc) is left out."""
    stream = residuals(objective.model, objective.follow_batches, positions)
    kinds = [doc.get("kind") for batch in objective.follow_batches for doc in batch.docs]
    image = torch.tensor([kind == "follow_image" for kind in kinds])
    followed = torch.cat([p >= 0.5 for p in objective.open_follow]).cpu()
    fitted = {}
    for name in directions:
        split = followed if name == "following" else image
        if split.all() or not split.any():
            continue
        difference = stream[split].mean(0) - stream[~split].mean(0)
        if name == "modality_pc1":
            centred = stream - stream.mean(0)
            pc = torch.linalg.svd(centred.transpose(0, 1), full_matrices=False).Vh[:, 0]  # [layers, hidden]
            sign = torch.sign((pc * difference).sum(-1, keepdim=True))
            difference = pc * sign * difference.norm(dim=-1, keepdim=True)
        fitted[name] = difference
    return fitted


def choose_setting(objective: Objective, vectors: torch.Tensor, options: SteerOptions) -> dict:
    """Every (layer, alpha)'s validation rates for one direction's per-layer `vectors` (control drops where
    they can still matter: `amplify.best_of`), and the best; ties go to the smaller |alpha|."""
    layers = options.layers if options.layers is not None else range(vectors.shape[0])
    settings = [{"layer": layer, "alpha": alpha} for layer in layers for alpha in options.alphas]

    def intervention(setting: dict):
        def hooks():
            return steer(objective.model, vectors[setting["layer"]], [setting["layer"]], setting["alpha"],
                         options.positions)
        return hooks

    tried = best_of(objective, settings, [intervention(setting) for setting in settings],  # resumed at its layer
                    [setting["layer"] for setting in settings], options.broken_weight, options.positions == "last")
    best = chosen(tried, tie=lambda point: -abs(point["alpha"]))
    return {"layer": best["layer"], "alpha": best["alpha"], "validation": best, "tried": tried}


def steering_spec(fingerprint: ModelFingerprint, direction: str, vector: torch.Tensor, setting: dict,
                  positions: str, provenance: dict) -> InterventionSpec:
    return InterventionSpec(
        model=fingerprint,
        steering=SteeringSpec.of(vector, [setting["layer"]], setting["alpha"], positions),
        provenance={"name": f"steer {direction} L{setting['layer']} x{setting['alpha']:g}", "method": "steering",
                    "direction": direction, "split": "validation", **provenance},
    )


def other_share(run) -> float | None:
    """The share of follow answers naming neither side, pooled over the follow tasks' items."""
    import json

    from modarb_tasks.results import task_score

    document = json.loads(run.results_file.read_text())
    parts = [score for score in (task_score(document, task, "other") for task in run.follow_by_doc) if score]
    total = sum(score.n for score in parts)
    return sum(score.value * score.n for score in parts) / total if total else None


@dataclass(frozen=True)
class SteerRun:
    """What `modarb steer` runs: the model, the data and sizes, and the search (SteerOptions)."""

    model: str | None = None  # None: the bundled organism
    n_items: int = 100  # validation items per task kind that fit the directions and choose layer and alpha
    limit: int = 200  # test items per task scored by lm-eval
    batch_size: int = 64
    device: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    options: SteerOptions = SteerOptions()


def run_steer(config: SteerRun, out, source, docs: list[dict], dropped: dict) -> dict:
    """Fit, choose on validation, score on test, write the specs and summaries into OutputFolder `out`."""
    from interventions.analysis.data import data_record
    from interventions.analysis.evaluation import Evaluator, quiet_lm_eval
    from interventions.analysis.identify import frozen
    from interventions.mechanism.spec import model_fingerprint
    from interventions.model.lm import ModarbVLM

    quiet_lm_eval()
    lm = ModarbVLM(pretrained=config.model, batch_size=config.batch_size, device=config.device, dtype=config.dtype,
                   trust_remote_code=config.trust_remote_code)
    fingerprint = model_fingerprint(lm.model)
    outside = [layer for layer in config.options.layers or () if layer >= fingerprint.num_layers]
    if outside:
        raise ModarbError(f"--layers: layer {outside[0]} is out of range: the model has layers "
                          f"0..{fingerprint.num_layers - 1}")
    model_arg = ",".join([f"pretrained={config.model}"] * bool(config.model)
                         + ["trust_remote_code=True"] * config.trust_remote_code)
    evaluator = Evaluator(lm, model_arg, out.work / "runs", config.limit, config.batch_size, out.final / "runs",
                          tasks=source.tasks())
    baseline = evaluator.run("baseline", None)
    with frozen(lm.model):
        chosen = choose_steering(validation_objective(lm, docs, config.batch_size), config.options)
    summary = {
        "model": config.model or "modarb-organism",
        "fingerprint": fingerprint.describe(),
        "limit": config.limit,
        "data": data_record(source, dropped, len(docs)),
        **score_steering(evaluator, baseline, fingerprint, chosen),
    }
    write_summary(out.work, summary)
    return summary


def validation_objective(lm, docs: list[dict], batch_size: int) -> Objective:
    """The first-token objective over validation `docs` (follow and control kinds), open model scored once."""
    from interventions.analysis.batches import iter_batches
    from interventions.analysis.identify import split_docs

    follow, control = split_docs(docs)
    return Objective(lm.model, list(iter_batches(lm.model, lm.processor, follow, batch_size)),
                     list(iter_batches(lm.model, lm.processor, control, batch_size)))


@dataclass
class ChosenSteering:
    """Each fitted direction's per-layer vectors and its setting chosen on validation."""

    options: SteerOptions
    vectors: dict[str, torch.Tensor]
    settings: dict[str, dict]
    validation_docs: int


@torch.no_grad()
def choose_steering(objective: Objective, options: SteerOptions) -> ChosenSteering:
    """Fit the directions on the validation `objective` and choose each one's layer and alpha there."""
    vectors = fit_directions(objective, options.positions, options.directions)
    docs = sum(len(batch.docs) for batch in (*objective.follow_batches, *objective.control_batches))
    return ChosenSteering(options, vectors, {name: choose_setting(objective, per_layer, options)
                                             for name, per_layer in vectors.items()}, docs)


def score_steering(evaluator, baseline, fingerprint: ModelFingerprint, chosen: ChosenSteering,
                   against: dict | None = None) -> dict:
    """Each chosen setting scored by `evaluator` on the test split against `baseline`: the summary's options,
    baseline and settings. Each setting's spec, and its vector, lie in its run folder runs/steer_<direction>/.
    `against`: name -> another Run on the same items; each setting records `vs_<name>`, its paired comparison."""
    from interventions.analysis.evaluation import paired_vs
    from interventions.analysis.experiments import amplify_point

    options, settings = chosen.options, []
    for name, setting in chosen.settings.items():
        spec = steering_spec(fingerprint, name, chosen.vectors[name][setting["layer"]], setting, options.positions,
                             {"validation_docs": chosen.validation_docs})
        run = evaluator.run(f"steer_{name}", spec)
        point = amplify_point(baseline, run, setting["alpha"])
        settings.append({
            "direction": name, "layer": setting["layer"], "alpha": setting["alpha"], "positions": options.positions,
            "spec": f"runs/steer_{name}/spec.json", "identity": spec.identity(), "validation": setting["validation"],
            "test": rates_on_test(point) | {"mf_ratio": run.scores.get("mf_ratio"), "command": run.command},
            "tried": setting["tried"],
            **{f"vs_{other}": paired_vs(reference, run) for other, reference in (against or {}).items()},
        })
    return {
        "options": asdict(options),
        "skipped_directions": sorted(set(options.directions) - set(chosen.vectors)),
        "baseline": {"visual_control": baseline.scores.get("visual_control"),
                     "language_control": baseline.scores.get("language_control"),
                     "mf_ratio": baseline.scores.get("mf_ratio"), "other": other_share(baseline),
                     "command": baseline.command},
        "settings": settings,
    }


def rates_on_test(point) -> dict:
    """An AmplifyPoint's restored and broken items, both controls and the `other` share, on the test split."""
    return {"restored": point.restored, "failed": point.failed, "restoration_rate": point.restoration_rate,
            "broken": point.broken, "followed": point.followed, "broken_rate": point.broken_rate,
            "visual_control": point.run.scores.get("visual_control"),
            "language_control": point.run.scores.get("language_control"), "other": other_share(point.run)}


def value_on_test(rates: dict, baseline: dict, broken_weight: float = AmplifyOptions.broken_weight) -> float:
    """Validation's value on the test split: restored share - broken_weight x broken share - control drops
    (in points of accuracy against `baseline`), so interventions of any kind are ranked one way."""
    restored = rates["restoration_rate"] if rates["failed"] else 0.0
    drops = sum(max(0.0, baseline[key] - rates[key]) for key in ("visual_control", "language_control"))
    return restored - broken_weight * rates["broken_rate"] - drops


def write_summary(folder, summary: dict) -> None:
    """steer.json and steer.md in `folder`."""
    from modarb_tasks.files import write_json, write_text

    write_json(folder / "steer.json", summary)
    write_text(folder / "steer.md", markdown(summary))


def markdown(summary: dict) -> str:
    """The summary as a short Markdown report: one row per chosen setting beside the baseline."""
    base = summary["baseline"]
    lines = [
        f"# Residual steering on {summary['model']}",
        "",
        f"Directions fitted and layer/alpha chosen on validation ({summary['data']['docs']} docs, positions "
        f"`{summary['options']['positions']}`) by restored - {summary['options']['broken_weight']:g} x broken - "
        f"control drops; scored by lm-eval on the test split ({summary['limit']} items per task).",
        "",
        "| setting | layer | alpha | validation value | restored | broken | visual control | language control | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| baseline | | | | | | {base['visual_control']:.3f} | {base['language_control']:.3f} | "
        f"{_share(base['other'])} |",
    ]
    for s in summary["settings"]:
        test = s["test"]
        lines.append(
            f"| steer {s['direction']} | {s['layer']} | {s['alpha']:g} | {s['validation']['value']:.3f} | "
            f"{test['restored']}/{test['failed']} ({_share(test['restoration_rate'])}) | "
            f"{test['broken']}/{test['followed']} ({_share(test['broken_rate'])}) | {test['visual_control']:.3f} | "
            f"{test['language_control']:.3f} | {_share(test['other'])} |")
    if summary["skipped_directions"]:
        lines += ["", f"Not fitted (a group was empty on validation): {', '.join(summary['skipped_directions'])}."]
    lines += ["", "Each setting's spec (and its vector, `.safetensors`) is in its run folder `runs/steer_<direction>/`; "
              "its lm-eval command is in steer.json."]
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"
