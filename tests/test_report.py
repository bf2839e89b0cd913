"""The reproduce report's words are computed from its numbers: gate-response and flow findings."""

from __future__ import annotations

from interventions.analysis.gate_response import GATES
from interventions.analysis.report import flow_findings, gate_findings


def _identified(curves):
    return {"gate_response": curves, "gates": list(GATES)}


def _curve(head, mean, exact, estimate, share, gain):
    return {"head": head, "mean": mean, "exact_drop": exact, "attribution_estimate": estimate,
            "first_quarter_share": share, "amplify_gain": {"mean": gain, "follow_text": gain}}


def test_gate_findings_name_heads_at_an_optimum_of_their_scale():
    saturated = _curve([0, 5], [1.0, 3.0, 5.0, 6.5, 6.75, 6.0, 4.0, 2.0], 5.75, -0.05, 0.043, -4.75)
    linear = _curve([4, 6], [6.0, 6.25, 6.5, 6.75, 7.0, 8.0, 10.0, 14.0], 1.0, 1.0, 0.25, 7.0)
    lines = gate_findings(_identified([saturated, linear]))
    assert "- **L0H5**: blocking lowers the mean difference by 5.75; attribution estimates -0.05." in lines[2]
    assert "4% of the drop has happened by gate 0.75" in lines[2]
    assert "At ×8: -4.75 overall, -4.75 on follow-text." in lines[2]
    assert lines[-1].startswith("Curves highest at gate 1: L0H5.")  # the linear head is not named


def test_gate_findings_stay_silent_without_curves_or_peaks():
    assert gate_findings({"gate_response": [], "gates": list(GATES)}) == []
    rising = _curve([1, 1], [0.0, 1, 2, 3, 4, 5, 6, 7], 4.0, 4.0, 0.25, 3.0)
    assert not any("highest at gate 1" in line for line in gate_findings(_identified([rising])))


def _flow(edges_by_side):
    layers = [0, 1, 2, 3]
    return {"window": 1, "layers": layers, "flow": {"standard": {
        side: {"n": 8, "baseline_pf": {"mean": 0.8}, "edges": {edge: {"mean": values} for edge, values in edges.items()}}
        for side, edges in edges_by_side.items()}}}


def test_flow_findings_report_instruction_to_last_when_it_matters():
    text = {"vision->instruction": [0.0, -0.01, 0.0, 0.0], "context->instruction": [0.0, 0.0, 0.0, 0.0],
            "vision->last": [0.0, 0.0, 0.0, -0.12], "context->last": [0.0, 0.0, 0.0, -0.02],
            "instruction->last": [-0.6, 0.0, 0.0, 0.0]}
    lines = flow_findings(_flow({"text": text}))
    assert lines[2].startswith("- **follow-text** (baseline P_F 0.800, 8 items): instruction->last ΔP_F -0.600 at layer 0")
    assert "This model differs: Vision/Context→Last cuts lower P_F by up to 0.120" in lines[-1]
    assert lines[-1].endswith("cutting it lowers P_F by 0.600 on follow-text at layer 0 (depth 12%), so the last "
                              "position reads the instruction directly.")


def test_flow_findings_agree_with_the_paper_when_instruction_edges_dominate():
    image = {"vision->instruction": [0.0, -0.3, -0.2, 0.0], "context->instruction": [0.0, -0.1, 0.0, 0.0],
             "vision->last": [0.0, 0.0, 0.0, -0.01], "context->last": [0.0, 0.0, 0.0, 0.0],
             "instruction->last": [0.0, 0.0, 0.0, -0.02]}
    last = flow_findings(_flow({"image": image}))[-1]
    assert "This model agrees in kind: cutting →Instruction edges lowers P_F by up to 0.300" in last
    assert "Instruction→Last" not in last  # -0.02 is under the threshold
