"""The report folder of `modarb reproduce`: summary.json, report.md and the figures.

Every number in report.md is summary.json's (or flow.json's, handed over in memory),
and every table row names the command that recomputes it. This module computes what the report
says (which edges and heads matter, what that means beside the paper); the templates in
templates/report.md.j2 and templates/report/ lay it out.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2
import matplotlib

from modarb_tasks.catalog import LABELS, SCORES

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from modarb_tasks.files import write_json, write_png, write_text  # noqa: E402

TEMPLATES = Path(__file__).parent / "templates"

PAPER_TARGETS = {
    "block_top_relative_drop": 0.40,  # blocking the top 5% cuts mf_ratio by >= 40% (relative)
    "control_drop_points": 0.05,  # ... while each control drops by <= 5 points
    "random_vs_top": 1 / 3,  # random 5% cuts it by less than a third of the top drop
    "restoration_rate": 0.40,  # amplification restores >= 40% of failed items ...
    "broken_rate": 0.05,  # ... while breaking <= 5% of the items the model followed
    "top_overlap": 0.60,  # attribution's top-5% overlaps the exact sweep's by >= 0.6
}
SCORE_LABELS = {score: LABELS[score].prose for score in SCORES}


def checked(summary: dict) -> dict:
    """`summary` with the paper's checks added (the top set against the random sets, and the targets)."""
    summary = summary | {"top_vs_random": top_vs_random(summary)}
    return summary | {"targets": targets(summary)}


def write(folder: Path, summary: dict, flow: dict) -> None:
    """Write the figures, summary.json (`summary`, checked) and report.md (with `flow`, flow.json's content)
    into `folder` (flow/ and identify/ already there)."""
    plot_blocking_curve(summary["blocking_curve"], folder / "figures" / "blocking_curve.png")
    plot_amplification(summary["amplify"]["curve"], folder / "figures" / "amplification.png")
    write_json(folder / "summary.json", summary, indent=2)
    write_text(folder / "report.md", markdown(summary, flow, folder))


def targets(summary: dict) -> list[dict]:
    """The paper's shape as checks on this model: measured value, the bar, met or missed."""
    base, top, rand = summary["baseline"], summary["block_top"], summary["block_random"]
    drop_top = (base["mf_ratio"] - top["mf_ratio"]) / base["mf_ratio"] if base["mf_ratio"] else 0.0
    drop_random = (base["mf_ratio"] - rand["mf_ratio"]) / base["mf_ratio"] if base["mf_ratio"] else 0.0
    control_drop = max(base[key] - top[key] for key in ("visual_control", "language_control"))
    rows = [
        ("blocking top heads cuts MF ratio (relative)", drop_top, ">=", PAPER_TARGETS["block_top_relative_drop"]),
        ("largest control drop under that block (points)", control_drop, "<=", PAPER_TARGETS["control_drop_points"]),
        ("random-set drop / top-set drop", drop_random / drop_top if drop_top > 0 else float("inf"), "<",
         PAPER_TARGETS["random_vs_top"]),
        ("amplification (learned gates) restores failed items (share)", summary["amplify"]["restoration_rate"], ">=",
         PAPER_TARGETS["restoration_rate"]),
        ("... and breaks followed items (share)", summary["amplify"]["broken_rate"], "<=",
         PAPER_TARGETS["broken_rate"]),
        ("attribution vs exact sweep, top-k overlap", summary["identify"]["top_overlap"], ">=",
         PAPER_TARGETS["top_overlap"]),
    ]
    compare = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    significant = _significance(summary)
    return [{"check": name, "value": value, "bar": f"{op} {bar:.2f}", "met": bool(compare[op](value, bar)),
             "significant": significant.get(i)}
            for i, (name, value, op, bar) in enumerate(rows)]


SIGNIFICANCE = 0.05


def _significance(summary: dict) -> dict[int, bool]:
    """Target row -> whether it is met beyond chance (rows without a test are left out).

    Row 0: the relative MF-ratio drop at the near end of its paired 95% interval still reaches the bar.
    Row 1: each control's drop at the far end of its interval stays within the bar.
    Row 2: the top set's MF-ratio drop exceeds the random draws' at p < 0.05 (see top_vs_random).
    """
    paired, base = summary["block_top"].get("vs_baseline"), summary["baseline"]["mf_ratio"]
    found = {}
    if paired and "mf_ratio" in paired and base:
        found[0] = -paired["mf_ratio"]["high"] / base >= PAPER_TARGETS["block_top_relative_drop"]
    if paired and all(key in paired for key in ("visual_control", "language_control")):
        found[1] = all(-paired[key]["low"] <= PAPER_TARGETS["control_drop_points"]
                       for key in ("visual_control", "language_control"))
    tested = summary.get("top_vs_random")
    if tested is not None:
        found[2] = tested["p"] < SIGNIFICANCE
    return found


def top_vs_random(summary: dict) -> dict | None:
    """The top set's MF-ratio drop against the random sets' drops (each of as many heads), as a
    permutation-style test: p = (1 + draws dropping at least as much) / (1 + draws). With d draws
    p is at least 1/(d + 1): 19 draws (--draws) are needed before p can fall below 0.05."""
    base, top, draws = summary["baseline"]["mf_ratio"], summary["block_top"]["mf_ratio"], summary["block_random"]["draws"]
    if base is None or top is None or not draws:
        return None
    top_drop = base - top
    random_drops = [base - draw["mf_ratio"] for draw in draws]
    as_large = sum(drop >= top_drop for drop in random_drops)
    return {"top_drop": top_drop, "random_drops": random_drops, "draws": len(draws), "as_large": as_large,
            "p": (1 + as_large) / (1 + len(draws))}


def plot_blocking_curve(curve: list[dict], path: Path) -> None:
    fractions = [100 * point["fraction"] for point in curve]
    keys = ("mf_ratio", "visual_control", "language_control")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), sharey=True)
    for ax, key in zip(axes, keys):
        lows = [min(run[key] for run in point["random"]) for point in curve]
        highs = [max(run[key] for run in point["random"]) for point in curve]
        ax.fill_between(fractions, lows, highs, color="tab:gray", alpha=0.25, label="random (min-max)")
        ax.plot(fractions, [p["random_mean"][key] for p in curve], "o--", color="tab:gray", label="random (mean)")
        ax.plot(fractions, [p["top"][key] for p in curve], "o-", color="tab:red", label="top-ranked")
        ax.set_title(SCORE_LABELS[key])
        ax.set_xlabel("heads blocked (%)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (lm-eval, test split)")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    write_png(fig, path)


def plot_amplification(curve: list[dict], path: Path) -> None:
    alphas = [point["alpha"] for point in curve]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot(alphas, [p["restoration_rate"] for p in curve], "o-", color="tab:red", label="restoration rate")
    ax.plot(alphas, [p["broken_rate"] for p in curve], "x-", color="tab:orange", label="broken rate")
    ax.plot(alphas, [p["visual_control"] for p in curve], "s--", color="tab:blue", label="visual control")
    ax.plot(alphas, [p["language_control"] for p in curve], "^--", color="tab:green", label="language control")
    ax.set_xlabel("amplification α of the top heads")
    ax.set_ylabel("rate / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, path)


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["num"] = format  # {{ x|num(".3f") }}: Python's own format spec, as the f-strings had
    environment.filters["score"] = lambda value: "–" if value is None else format(value, ".3f")
    return environment


def render(template: str, **context) -> str:
    """One template of templates/ (the report, or one of its sections in report/) filled with `context`."""
    return _environment().get_template(template).render(**context)


def markdown(summary: dict, flow: dict, folder: Path) -> str:
    """report.md for `summary`, the flow.json beside it and the figures under `folder`."""
    return render("report.md.j2", **context(summary, flow, folder))


def context(summary: dict, flow: dict, folder: Path) -> dict:
    """What report.md shows, as plain values: the summary itself and what the report computes from it."""
    amplify = summary["amplify"]
    return {
        "summary": summary,
        "score_labels": SCORE_LABELS,
        "unit": "split" if summary["data"]["data"] == "shapes" else "half",
        "data": summary["data"],
        "by_type": mf_ratio_rows(summary["data"]["mf_ratio_by_type"]),
        "paired_rows": paired_rows(summary),
        "preserved": preserved_rows(summary.get("preserved_ability")),
        "learned_gates": [{"name": _head_name(head), "gate": gate} for head, gate in zip(amplify["heads"], amplify["gates"])],
        "objective": objective_rows(summary),
        "gates": gate_findings(summary["identify"]),
        "flow": flow_findings(flow),
        "figures": {part: [{"stem": png.stem, "path": f"{part}/{png.name}"} for png in sorted((folder / part).glob("*.png"))]
                    for part in ("identify", "flow")},
    }


def paired_rows(summary: dict) -> list[dict]:
    """Each blocking run against the baseline, item by item: per score "Δ [low, high] b/c p"
    (empty for a summary written before runs kept per-item outcomes)."""
    runs = [(f"block top heads {summary['block_top']['heads']}", summary["block_top"])]
    runs += [(f"{method}: {run['heads']}", run) for method, run in summary["block_top_by_ranking"].items()]
    runs += [(f"random {draw['heads']}", draw) for draw in summary["block_random"]["draws"]]
    return [{"name": name, "cells": {key: _paired_cell(run["vs_baseline"].get(key)) for key in SCORE_LABELS}}
            for name, run in runs if "vs_baseline" in run]


def preserved_rows(block: dict | None) -> list[dict] | None:
    """The "Preserved ability" table: per run, each lm-eval control's value (± stderr) and, beside the
    baseline, Δ with its interval and the verdict in the metric's direction (None: no --controls)."""
    if block is None:
        return None
    rows = []
    for run in block["runs"]:
        cells = []
        for task in block["tasks"]:
            score = run["scores"][task["task"]]
            text = f"{score['value']:.3f}" + ("" if score["stderr"] is None else f" ± {score['stderr']:.3f}")
            compared = score.get("vs_baseline")
            if compared is not None:
                interval = ("" if compared["low"] is None else
                            f" [{compared['low']:+.3f}, {compared['high']:+.3f}]")
                text += f" (Δ {compared['delta']:+.3f}{interval}, {compared['change']})"
            cells.append(text)
        rows.append({"run": run["run"], "cells": cells})
    return rows


def _paired_cell(compared: dict | None) -> str:
    if compared is None:
        return "–"
    return (f"{compared['delta']:+.3f} [{compared['low']:+.3f}, {compared['high']:+.3f}] "
            f"b {compared['b']} c {compared['c']} p {compared['p']:.2g}")


def _head_name(head) -> str:
    return "L{}H{}".format(*head)


def mf_ratio_rows(by_type: dict) -> list[dict]:
    """Per question type: MF ratio at baseline and under the top-heads block (None: no such docs there)."""
    return [{"kind": kind, "baseline": base["mf_ratio"], "block_top": by_type["block_top"].get(kind, {}).get("mf_ratio"),
             "n": max(base["n"].values())} for kind, base in by_type["baseline"].items()]


def objective_rows(summary: dict) -> list[dict]:
    """Each ranking's top set on the validation objective, and what its block then does on test."""
    objective, best = summary["identify"].get("objective") or {}, summary["identify"].get("objective_best")
    base, blocked = summary["baseline"], summary["block_top_by_ranking"]
    return [{"method": method, "best": method == best, "heads": terms["heads"], "value": terms["value"],
             "following_drop": terms["following_drop"], "visual_drop": terms.get("visual_control_drop", 0.0),
             "language_drop": terms.get("language_control_drop", 0.0), "test": _test_drops(base, blocked.get(method))}
            for method, terms in objective.items()]


def _test_drops(base: dict, run: dict | None) -> dict | None:
    """MF ratio's relative drop and each control's drop in points under `run` (None: not run, or no MF ratio)."""
    if run is None or not base["mf_ratio"]:
        return None
    return {"mf_ratio": (base["mf_ratio"] - run["mf_ratio"]) / base["mf_ratio"],
            "visual_control": base["visual_control"] - run["visual_control"],
            "language_control": base["language_control"] - run["language_control"]}


def gate_findings(identified: dict) -> dict | None:
    """The gate-response curves of the top heads, and which sit at an optimum of their scale (None: no curves).

    Computed from the curves alone. A head whose curve is highest at gate 1 (lower at the gates on
    either side) sits at an optimum of its own scale, as training leaves heads: the derivative there
    is ~0, so attribution, a first derivative, ranks it near 0 whatever blocking it does, and
    amplifying it lowers following instead of raising it.
    """
    curves, gates = identified.get("gate_response") or [], identified.get("gates") or []
    if not curves:
        return None
    one = gates.index(1.0)
    heads = [{"name": _head_name(curve["head"]), "exact_drop": curve["exact_drop"],
              "attribution_estimate": curve["attribution_estimate"], "share": curve["first_quarter_share"],
              "gain": curve["amplify_gain"]["mean"],
              "sides": [(side.replace("_", "-"), curve["amplify_gain"][side])
                        for side in ("follow_image", "follow_text") if side in curve["amplify_gain"]]}
             for curve in curves]
    peaked = [_head_name(c["head"]) for c in curves
              if 0 < one < len(gates) - 1 and c["mean"][one] > max(c["mean"][one - 1], c["mean"][one + 1])]
    return {"heads": heads, "top_gate": gates[-1], "peaked": peaked}


def flow_findings(flow: dict, threshold: float = 0.05) -> dict:
    """Which edges move P_F at which layer, per instruction side, and how that compares with the paper.

    An edge "matters" when its mean ΔP_F drops by more than `threshold` at some layer; the
    comparison with the paper is computed from the numbers, never written in advance.
    """
    layers = flow["layers"]
    standard = _sides(flow["flow"].get("standard", {}))
    sides = []
    for side, parts in sorted(standard.items()):
        drops = {edge: (min(values["mean"]), layers[values["mean"].index(min(values["mean"]))])
                 for edge, values in parts["edges"].items()}
        mattering = sorted((d, edge, layer) for edge, (d, layer) in drops.items() if d < -threshold)
        sides.append({"side": side, "baseline_pf": parts["baseline_pf"]["mean"], "n": parts["n"],
                      "cuts": [{"edge": edge, "drop": d, "layer": layer, "depth": _depth(layer, layers)}
                               for d, edge, layer in mattering]})
    return {"window": flow["window"], "threshold": threshold, "sides": sides,
            "paper": _paper_comparison(standard, layers, threshold)}


def _sides(layout_part: dict) -> dict:
    return {side: part for side, part in layout_part.items() if "edges" in part}


def _depth(layer: int, layers: list[int]) -> float:
    """Where `layer` sits in the model, 0 (first) .. 1 (last), at the middle of the layer."""
    return (layer + 0.5) / len(layers)


def _paper_comparison(standard: dict, layers: list[int], threshold: float) -> dict | None:
    """This model beside the paper's Qwen2.5-VL-7B result, from the numbers alone (None: too few edges).

    verdict: "agrees" (the →Instruction cuts lower P_F most), "differs" (the →Last cuts do) or
    "unclear"; the drops are the largest of each kind, as positive numbers."""
    to_instruction = [min(p["edges"][e]["mean"]) for p in standard.values() for e in p["edges"] if e.endswith("->instruction")]
    to_last = [min(p["edges"][e]["mean"]) for p in standard.values() for e in ("vision->last", "context->last") if e in p["edges"]]
    if not to_instruction or not to_last:
        return None
    worst_instruction, worst_last = min(to_instruction), min(to_last)
    if worst_instruction < -threshold and worst_instruction < 2 * worst_last:
        verdict = "agrees"
    elif worst_last < -threshold and worst_last < 2 * worst_instruction:
        verdict = "differs"
    else:
        verdict = "unclear"
    return {"verdict": verdict, "instruction_drop": -worst_instruction, "last_drop": -worst_last,
            "instruction_to_last": _instruction_to_last(standard, layers, threshold)}


def _instruction_to_last(standard: dict, layers: list[int], threshold: float) -> dict | None:
    """Where the last position reads the instruction itself, when cutting that lowers P_F (else None)."""
    cuts = [(min(p["edges"]["instruction->last"]["mean"]), side, p["edges"]["instruction->last"]["mean"])
            for side, p in standard.items() if "instruction->last" in p["edges"]]
    if not cuts or min(cuts)[0] >= -threshold:
        return None
    drop, side, means = min(cuts)
    layer = layers[means.index(drop)]
    return {"drop": -drop, "side": side, "layer": layer, "depth": _depth(layer, layers)}
