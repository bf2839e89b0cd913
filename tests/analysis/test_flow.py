"""`modarb flow`: knockout sweep, logit lens, direct contributions, CLI, on a tiny untrained organism."""

from __future__ import annotations

import json

import pytest
import torch

from interventions import cli
from interventions.analysis.batches import encode_docs
from interventions.analysis.flow import (
    EDGES,
    default_window,
    edge_masks,
    flow_sweep,
)
from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
from interventions.analysis.lens import logit_lens
from interventions.analysis.objective import follow_probabilities
from interventions.mechanism.knockout import knockout
from untrained_organism import save_untrained_organism

LAYERS = 3
FLOW_CLI = "interventions.cli.flow"


@pytest.fixture(scope="module")
def organism_folder(tmp_path_factory):
    return save_untrained_organism(tmp_path_factory.mktemp("tiny_flow_organism"), layers=LAYERS)


@pytest.fixture(scope="module")
def loaded(organism_folder):
    from interventions.model.loading import load_model

    return load_model(organism_folder)


@pytest.fixture(scope="module")
def docs():
    return shapes_docs(3, FOLLOW_KINDS, layouts=["standard"])  # 3 items x (follow image, follow text)


def test_default_window_is_the_odd_count_nearest_30_percent_of_depth():
    assert [default_window(n) for n in (1, 3, 6, 10, 28, 32)] == [1, 1, 1, 3, 9, 9]


def test_empty_knockout_leaves_p_f_bit_identical(loaded, docs):
    model, processor = loaded
    batch = encode_docs(model, processor, docs)
    baseline = follow_probabilities(model, batch)
    nobody = torch.zeros_like(batch.groups["image"])
    with knockout(model, [], range(LAYERS)):
        assert torch.equal(follow_probabilities(model, batch), baseline)
    with knockout(model, [(nobody, batch.groups["image"])], range(LAYERS)):
        assert torch.equal(follow_probabilities(model, batch), baseline)
    result = flow_sweep(model, processor, docs, edges=(), batch_size=4)  # other batches: other padding
    assert torch.allclose(result.part("standard", "image").baseline, baseline[:3].double(), atol=1e-6)
    assert result.part("standard", "text").effects == {}


def _swapped_images(docs: list[dict]) -> list[dict]:
    return [dict(doc, image=docs[(i + 1) % len(docs)]["image"]) for i, doc in enumerate(docs)]


def test_cutting_every_image_edge_makes_follow_image_p_f_independent_of_the_image(loaded, docs):
    model, processor = loaded
    image_docs = [doc for doc in docs if doc["instruction_side"] == "image"]
    batch, swapped = encode_docs(model, processor, image_docs), encode_docs(model, processor, _swapped_images(image_docs))
    assert torch.equal(batch.inputs["input_ids"], swapped.inputs["input_ids"])
    assert not torch.equal(batch.inputs["pixel_values"], swapped.inputs["pixel_values"])
    # without the knockout the image matters
    assert (follow_probabilities(model, batch) - follow_probabilities(model, swapped)).abs().max() > 1e-7

    def image_cut(b):
        text = b.inputs["attention_mask"].bool() & ~b.groups["image"]
        return [edge_masks(b.groups, "vision->instruction"), edge_masks(b.groups, "vision->last"), (text, b.groups["image"])]

    layers = range(LAYERS)
    with knockout(model, image_cut(batch), layers):
        original = follow_probabilities(model, batch)
    with knockout(model, image_cut(swapped), layers):
        other = follow_probabilities(model, swapped)
    torch.testing.assert_close(original, other, rtol=0, atol=1e-6)


def test_batched_and_per_item_sweeps_agree(loaded, docs):
    model, processor = loaded
    edges = ("vision->instruction", "context->instruction", "instruction->last")
    batched = flow_sweep(model, processor, docs, edges=edges, batch_size=3)
    single = flow_sweep(model, processor, docs, edges=edges, batch_size=1)
    assert batched.window == single.window == 1 and batched.layers == [0, 1, 2]
    for side in ("image", "text"):
        one, other = batched.part("standard", side), single.part("standard", side)
        assert one.item_ids == other.item_ids and len(one.item_ids) == 3
        assert (one.baseline - other.baseline).abs().max() < 1e-5
        for edge in edges:
            assert one.effects[edge].shape == (3, 3)
            assert (one.effects[edge] - other.effects[edge]).abs().max() < 1e-5
    assert max(effect.abs().max() for effect in batched.part("standard", "image").effects.values()) > 1e-6


def test_edges_that_cannot_act_are_skipped_with_a_reason(loaded):
    model, processor = loaded
    docs = shapes_docs(1, FOLLOW_KINDS, layouts=["system_prompt", "instruction_after"])
    result = flow_sweep(model, processor, docs, edges=("vision->system", "instruction->constraint"), batch_size=2)
    system = result.part("system_prompt", "image")
    assert system.skipped == {"vision->system": "'image' comes after 'system' in the system_prompt layout: "
                                                "causal attention already blocks it"}
    assert set(system.effects) == {"instruction->constraint"}
    after = result.part("instruction_after", "text")
    assert after.skipped["vision->system"] == "token group 'system' is empty in the instruction_after layout"
    assert "comes after 'constraint'" in after.skipped["instruction->constraint"]


@pytest.fixture(scope="module")
def lens(loaded, docs):
    model, processor = loaded
    return logit_lens(model, processor, docs, batch_size=4)


def test_logit_lens_at_the_last_layer_is_the_models_logit_difference(loaded, docs, lens):
    model, processor = loaded
    for side in ("image", "text"):
        part = lens.part("standard", side)
        assert part.lens_last.shape == part.lens_instruction.shape == (3, LAYERS)
        batch = encode_docs(model, processor, [d for d in docs if d["instruction_side"] == side])
        with torch.no_grad():
            logits = model(**batch.inputs).logits[:, -1]
        real = torch.log_softmax(logits.double(), -1)
        expected = torch.stack([
            real[row, ids_f].logsumexp(-1) - real[row, ids_c].logsumexp(-1)
            for row, (ids_f, ids_c) in enumerate(zip(batch.follow_ids, batch.compete_ids))
        ])
        torch.testing.assert_close(part.lens_last[:, -1], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(part.logit_diff, expected, rtol=0, atol=1e-5)
        assert not torch.allclose(part.lens_last[:, 0], expected)  # earlier layers read something else


def test_direct_contributions_add_up_to_the_linearised_logit_difference(loaded, docs, lens):
    model, processor = loaded
    for side in ("image", "text"):
        part = lens.part("standard", side)
        total = part.embedding + part.attention.sum(1) + part.mlp.sum(1)
        torch.testing.assert_close(total, part.linearised, rtol=0, atol=1e-5)
        assert part.attention.abs().min() > 0 and part.mlp.abs().min() > 0
        batch = encode_docs(model, processor, [d for d in docs if d["instruction_side"] == side])
        singletons = torch.tensor([len(f) == 1 and len(c) == 1 for f, c in zip(batch.follow_ids, batch.compete_ids)])
        torch.testing.assert_close(part.linearised[singletons], part.logit_diff[singletons], rtol=0, atol=1e-5)


def _modarb(argv, monkeypatch) -> int:
    if FLOW_CLI not in cli.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, FLOW_CLI])
    return cli.main(argv)


def test_cli_writes_flow_json_and_figures(organism_folder, tmp_path, monkeypatch):
    out = tmp_path / "flow"
    argv = ["flow", "--model", str(organism_folder), "--out", str(out), "--n-items", "2", "--batch-size", "2",
            "--layouts", "standard,system_prompt"]
    assert _modarb(argv, monkeypatch) == 0
    document = json.loads((out / "flow.json").read_text())
    assert document["window"] == 1 and document["layers"] == [0, 1, 2] and document["split"] == "validation"
    standard = document["flow"]["standard"]["image"]
    assert standard["item_ids"] == ["shapes-v1-0-validation-00000", "shapes-v1-0-validation-00001"]
    assert set(standard["edges"]) == set(EDGES) - {"vision->system", "context->system"}
    assert set(document["flow"]["system_prompt"]["text"]["skipped"]) == {"vision->system", "context->system"}
    curve = standard["edges"]["vision->instruction"]
    assert curve["n"] == 2 and len(curve["mean"]) == 3
    assert curve["mean"][1] == pytest.approx(sum(item[1] for item in curve["items"]) / 2)
    assert curve["ci_low"][1] <= curve["mean"][1] <= curve["ci_high"][1]
    assert set(document["lens"]["system_prompt"]) == {"image", "text"}
    assert len(document["contributions"]["standard"]["text"]["attention"]["mean"]) == 3
    assert document["command"].startswith(f"modarb flow --model {organism_folder} --out {out} --window 1")
    for name in document["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(document["figures"]) == 6


def test_cli_bad_window_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    argv = ["flow", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--window", "0"]
    assert _modarb(argv, monkeypatch) == 2
    error = capsys.readouterr().err
    assert error == "modarb: error: --window 0 must be a number of layers >= 1, e.g. --window 1\n"
    assert not (tmp_path / "out").exists()
