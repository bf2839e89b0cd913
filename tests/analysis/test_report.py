"""The reproduce report's words are computed from its numbers: gate-response and flow findings, and
the whole report.md from a saved summary, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from interventions.analysis.gate_response import GATES
from interventions.analysis.report import flow_findings, gate_findings, markdown, render

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "report"


def _identified(curves):
    return {"gate_response": curves, "gates": list(GATES)}


def _curve(head, mean, exact, estimate, share, gain):
    return {"head": head, "mean": mean, "exact_drop": exact, "attribution_estimate": estimate,
            "first_quarter_share": share, "amplify_gain": {"mean": gain, "follow_text": gain}}


def _gate_lines(identified) -> list[str]:
    return render("report/gates.md.j2", gates=gate_findings(identified)).splitlines()


def test_gate_findings_name_heads_at_an_optimum_of_their_scale():
    saturated = _curve([0, 5], [1.0, 3.0, 5.0, 6.5, 6.75, 6.0, 4.0, 2.0], 5.75, -0.05, 0.043, -4.75)
    linear = _curve([4, 6], [6.0, 6.25, 6.5, 6.75, 7.0, 8.0, 10.0, 14.0], 1.0, 1.0, 0.25, 7.0)
    assert gate_findings(_identified([saturated, linear]))["peaked"] == ["L0H5"]  # the linear head is not named
    lines = _gate_lines(_identified([saturated, linear]))
    assert "- **L0H5**: blocking lowers the mean difference by 5.75; attribution estimates -0.05." in lines[2]
    assert "4% of the drop has happened by gate 0.75" in lines[2]
    assert "At ×8: -4.75 overall, -4.75 on follow-text." in lines[2]
    assert lines[-1].startswith("Curves highest at gate 1: L0H5.")


def test_gate_findings_stay_silent_without_curves_or_peaks():
    assert gate_findings({"gate_response": [], "gates": list(GATES)}) is None
    assert _gate_lines({"gate_response": [], "gates": list(GATES)}) == []
    rising = _curve([1, 1], [0.0, 1, 2, 3, 4, 5, 6, 7], 4.0, 4.0, 0.25, 3.0)
    assert gate_findings(_identified([rising]))["peaked"] == []
    assert not any("highest at gate 1" in line for line in _gate_lines(_identified([rising])))


def _flow(edges_by_side):
    layers = [0, 1, 2, 3]
    return {"window": 1, "layers": layers, "flow": {"standard": {
        side: {"n": 8, "baseline_pf": {"mean": 0.8}, "edges": {edge: {"mean": values} for edge, values in edges.items()}}
        for side, edges in edges_by_side.items()}}}


def _flow_lines(flow) -> list[str]:
    return render("report/flow.md.j2", flow=flow_findings(flow)).splitlines()


def test_flow_findings_report_instruction_to_last_when_it_matters():
    text = {"vision->instruction": [0.0, -0.01, 0.0, 0.0], "context->instruction": [0.0, 0.0, 0.0, 0.0],
            "vision->last": [0.0, 0.0, 0.0, -0.12], "context->last": [0.0, 0.0, 0.0, -0.02],
            "instruction->last": [-0.6, 0.0, 0.0, 0.0]}
    paper = flow_findings(_flow({"text": text}))["paper"]
    assert paper["verdict"] == "differs" and paper["last_drop"] == 0.12 and paper["instruction_drop"] == 0.01
    assert paper["instruction_to_last"] == {"drop": 0.6, "side": "text", "layer": 0, "depth": 0.125}
    lines = _flow_lines(_flow({"text": text}))
    assert lines[2].startswith("- **follow-text** (baseline P_F 0.800, 8 items): instruction->last ΔP_F -0.600 at layer 0")
    assert "This model differs: Vision/Context→Last cuts lower P_F by up to 0.120" in lines[-1]
    assert lines[-1].endswith("cutting it lowers P_F by 0.600 on follow-text at layer 0 (depth 12%), so the last "
                              "position reads the instruction directly.")


def test_flow_findings_agree_with_the_paper_when_instruction_edges_dominate():
    image = {"vision->instruction": [0.0, -0.3, -0.2, 0.0], "context->instruction": [0.0, -0.1, 0.0, 0.0],
             "vision->last": [0.0, 0.0, 0.0, -0.01], "context->last": [0.0, 0.0, 0.0, 0.0],
             "instruction->last": [0.0, 0.0, 0.0, -0.02]}
    paper = flow_findings(_flow({"image": image}))["paper"]
    assert paper["verdict"] == "agrees" and paper["instruction_to_last"] is None  # -0.02 is under the threshold
    last = _flow_lines(_flow({"image": image}))[-1]
    assert "This model agrees in kind: cutting →Instruction edges lowers P_F by up to 0.300" in last
    assert "Instruction→Last" not in last


def test_flow_findings_without_edges_say_so():
    assert flow_findings(_flow({}))["paper"] is None
    assert _flow_lines(_flow({}))[-1] == "Not enough edges were measured to compare with the paper."


def test_report_of_a_saved_run_is_unchanged_byte_for_byte(tmp_path):
    """report.md of a saved `modarb reproduce` (shapes, --limit 40 --analysis-items 40), as the
    f-string builder wrote it before the templates: any change to the layout or words shows here."""
    summary = json.loads((FIXTURE / "summary.json").read_text())
    flow = json.loads((FIXTURE / "flow.json").read_text())
    for figure in (FIXTURE / "figures.txt").read_text().split():  # the report lists the PNGs it finds
        (tmp_path / figure).parent.mkdir(exist_ok=True)
        (tmp_path / figure).touch()
    assert markdown(summary, flow, tmp_path) == (FIXTURE / "report.md").read_text(encoding="utf-8")
