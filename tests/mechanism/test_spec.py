from __future__ import annotations

import json
import math

import pytest
import torch

from interventions.mechanism.apply import BatchState, apply_prepared, apply_spec, prepare_spec
from interventions.mechanism.heads import scale_heads
from interventions.mechanism.knockout import knockout
from interventions.mechanism.locate import InterventionError, locate_heads
from interventions.testing.random_init import HEAD_DIM, HEADS, LAYERS, build_tiny_model, random_batch
from interventions.mechanism.spec import (
    SCHEMA_V1,
    HeadScale,
    InterventionSpec,
    KnockoutSpec,
    SpecError,
    SpecNotFoundError,
    model_fingerprint,
)
from interventions.mechanism.token_groups import EmptyGroupError



def _document(**changes) -> dict:
    document = {
        "schema": SCHEMA_V1,  # a spec without steering is written as v1
        "model": {"name": "", "family": "llava", "num_layers": LAYERS, "num_heads": HEADS, "head_dim": HEAD_DIM},
        "heads": [{"layer": 1, "head": 2, "scale": 0.0}, {"layer": 0, "head": 3, "scale": 2.0}],
        "positions": "all",
        "knockout": {"edges": [{"query": "question", "key": "image"}], "layers": [0, 2], "heads": None},
        "provenance": {"method": "test", "command": "pytest", "created": "2026-01-01"},
    }
    document.update(changes)
    return document


def _groups(model, batch) -> dict[str, torch.Tensor]:
    """Token groups of a random batch: context before the image, question after it."""
    image = batch["input_ids"] == model.config.image_token_id
    attended = batch["attention_mask"].bool()
    before = torch.cumsum(image.long(), 1) == 0
    last = torch.zeros_like(image)
    last[:, -1] = True
    return {"image": image, "context": attended & before, "question": attended & ~before & ~image, "last": last}


def _write(tmp_path, content) -> str:
    path = tmp_path / "spec.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# --- acceptance through specs, every family, eager and sdpa ----------------------------------


def test_spec_scaling_every_head_by_one_is_bit_identical(tiny, batch):
    spec = InterventionSpec(
        model=model_fingerprint(tiny),
        heads=tuple(HeadScale(layer, head, 1.0) for layer in range(LAYERS) for head in range(HEADS)),
    )
    base = tiny(**batch).logits
    with apply_spec(tiny, spec):
        assert torch.equal(tiny(**batch).logits, base)


def test_block_spec_equals_zeroed_columns(tiny, batch):
    spec = InterventionSpec.from_inline(model=tiny, block="L1H2;L2H0")
    with apply_spec(tiny, spec):
        blocked = tiny(**batch).logits
    layout = locate_heads(tiny)
    for layer, head in ((1, 2), (2, 0)):
        layout.out_projection(layer).weight.data[:, head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0
    assert torch.equal(blocked, tiny(**batch).logits)


@pytest.mark.parametrize("edges, layers, heads, missing", [
    ((), (0, 1, 2), None, "edges"), ((("last", "image"),), (), None, "layers"), ((("last", "image"),), (0,), (), "heads")])
def test_a_knockout_that_would_change_nothing_is_refused(tiny, edges, layers, heads, missing):
    with pytest.raises(SpecError, match=f"^knockout has no {missing}, so it would change nothing; give {missing} or set "
                                        "knockout to null$"):
        InterventionSpec(model=model_fingerprint(tiny), knockout=KnockoutSpec(edges=edges, layers=layers, heads=heads))


def test_spec_knockout_and_scope_equal_the_direct_calls(tiny, batch):
    groups = _groups(tiny, batch)
    spec = InterventionSpec(
        model=model_fingerprint(tiny),
        heads=(HeadScale(0, 1, 0.0), HeadScale(2, 3, 3.0)),
        positions="question",
        knockout=KnockoutSpec(edges=(("question", "image"), ("last", "context")), layers=(1, 2), heads=(0, 2)),
    )
    with apply_spec(tiny, spec, groups):
        via_spec = tiny(**batch).logits
    edges = [(groups["question"], groups["image"]), (groups["last"], groups["context"])]
    with scale_heads(tiny, spec.scales(), groups["question"]), knockout(tiny, edges, [1, 2], heads=[0, 2]):
        direct = tiny(**batch).logits
    assert torch.equal(via_spec, direct)
    assert not torch.equal(via_spec, tiny(**batch).logits)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("attn", ["sdpa"])
def test_a_prepared_spec_hooks_each_batch_as_apply_spec_does(tiny):
    """Prepared once, applied to two batches with their own masks: each batch gets the direct calls on its masks."""
    spec = InterventionSpec(
        model=model_fingerprint(tiny),
        heads=(HeadScale(0, 1, 0.0), HeadScale(2, 3, 3.0)),
        positions="question",
        knockout=KnockoutSpec(edges=(("question", "image"), ("last", "context")), layers=(1, 2)),
    )
    batches = [random_batch(tiny, batch_size=2, seed=0), random_batch(tiny, batch_size=3, text_after=8, seed=1)]
    expected = []
    for batch in batches:
        groups = _groups(tiny, batch)
        edges = [(groups["question"], groups["image"]), (groups["last"], groups["context"])]
        with scale_heads(tiny, spec.scales(), groups["question"]), knockout(tiny, edges, [1, 2]):
            expected.append(tiny(**batch).logits)
    prepared = prepare_spec(tiny, spec)
    for batch, want in zip(batches, expected, strict=True):
        with apply_prepared(prepared, BatchState(token_groups=_groups(tiny, batch))):
            assert torch.equal(tiny(**batch).logits, want)
    assert not torch.equal(tiny(**batches[0]).logits, expected[0])  # the hooks left with the block


def test_batch_state_refuses_docs_and_masks_of_different_batches():
    masks = {"question": torch.ones(2, 5, dtype=torch.bool)}
    assert BatchState(docs=({}, {}), token_groups=masks).docs == ({}, {})
    with pytest.raises(InterventionError, match=r"^3 docs but token-group masks for \[2\] rows in one batch$"):
        BatchState(docs=({}, {}, {}), token_groups=masks)


# --- documents -----------------------------------------------------------------------------


def test_save_load_round_trip_and_identity(tmp_path):
    spec = InterventionSpec.from_dict(_document())
    path = spec.save(tmp_path / "deep" / "spec.json")
    assert [p.name for p in path.parent.iterdir()] == ["spec.json"]  # no temporary file left behind
    loaded = InterventionSpec.load(path)
    assert loaded == spec and loaded.to_dict() == _document()
    assert len(spec.identity()) == 12 and loaded.identity() == spec.identity()
    reordered = _document(heads=list(reversed(_document()["heads"])), provenance={"method": "other"})
    assert InterventionSpec.from_dict(reordered).identity() == spec.identity()
    changed = _document(heads=[{"layer": 1, "head": 2, "scale": 0.5}])
    assert InterventionSpec.from_dict(changed).identity() != spec.identity()
    renamed = _document(model=dict(_document()["model"], name="other-model"))
    assert InterventionSpec.from_dict(renamed).identity() != spec.identity()


@pytest.mark.parametrize("family", ["llava"])
@pytest.mark.parametrize("attn", ["sdpa"])
def test_from_inline(tiny):
    spec = InterventionSpec.from_inline(model=tiny, block="L1H2; L2H0", amplify="L0H3", alpha=2.5)
    assert spec.scales() == {(1, 2): 0.0, (2, 0): 0.0, (0, 3): 2.5}
    assert spec.model == model_fingerprint(tiny)
    assert spec.provenance == {"method": "inline", "command": "block=L1H2; L2H0,amplify=L0H3,alpha=2.5"}
    spec.validate_against(tiny)


# --- one-line errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"schema": "modarb.intervention/v1", ', "not valid JSON (line 1, column 38: Expecting property name enclosed in double quotes)"),
        (_document(schema="modarb.intervention/v3"), "unknown schema version 'modarb.intervention/v3'; this modarb reads 'modarb.intervention/v1' and 'modarb.intervention/v2'"),
        ([1, 2], "unknown schema version None; this modarb reads 'modarb.intervention/v1' and 'modarb.intervention/v2'"),
        (_document(heads=[{"layer": LAYERS, "head": 0, "scale": 0.0}]), f"layer {LAYERS} is out of range: the model has layers 0..{LAYERS - 1}"),
        (_document(heads=[{"layer": 0, "head": HEADS, "scale": 0.0}]), f"head L0H{HEADS} is out of range: the model has heads 0..{HEADS - 1}"),
        (_document(heads=[{"layer": 0, "head": 0, "scale": -1}]), "scale -1.0 of head L0H0 must be a finite number >= 0"),
        ('{"schema": "modarb.intervention/v1", "model": {"name": "", "family": "llava", "num_layers": 3, "num_heads": 4, '
         '"head_dim": 8}, "heads": [{"layer": 0, "head": 0, "scale": NaN}], "positions": "all", "knockout": null, '
         '"provenance": {}}', "scale nan of head L0H0 must be a finite number >= 0"),
        (_document(positions="instructions"), "unknown token group 'instructions'; choose one of all, last, system, image, context, instruction, question, constraint"),
        (_document(knockout={"edges": [{"query": "vision", "key": "last"}], "layers": [0]}), "unknown token group 'vision'; choose one of system, image, context, instruction, question, constraint, last"),
        (_document(knockout={"edges": [{"query": "last", "key": "image"}], "layers": [LAYERS]}), f"layer {LAYERS} is out of range: the model has layers 0..{LAYERS - 1}"),
        (_document(heads=[{"layer": 0, "head": 0, "scale": 0}, {"layer": 0, "head": 0, "scale": 1}]), "head L0H0 is listed twice; give each head one scale"),
        (_document(heads=[{"layer": 0, "head": 0}]), "heads/0: 'scale' is a required property"),
        (_document(extra=1), "document: Additional properties are not allowed ('extra' was unexpected)"),
    ],
    ids=["malformed", "version", "not-an-object", "layer", "head", "negative", "nan", "scope", "edge-group",
         "knockout-layer", "duplicate", "missing-field", "extra-field"],
)
def test_bad_spec_files_are_one_line_errors(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(SpecError) as err:
        InterventionSpec.load(path)
    assert str(err.value) == f"spec {path}: {message}"
    assert "\n" not in str(err.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecNotFoundError) as err:
        InterventionSpec.load(tmp_path / "nope.json")
    assert str(err.value) == f"spec file {tmp_path / 'nope.json'} does not exist; write one with `save` or check the path"


@pytest.mark.parametrize("family", ["llava"])
@pytest.mark.parametrize("attn", ["sdpa"])
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(amplify="L0H1", alpha=math.inf), "alpha=inf must be a finite number >= 0"),
        (dict(amplify="L0H1", alpha=-2), "alpha=-2.0 must be a finite number >= 0"),
        (dict(block="L0H1,L1H1"), "cannot read head 'L0H1,L1H1' in block=: write heads as L<layer>H<head> separated by ';'"),
        (dict(block="L9H0"), f"layer 9 is out of range: the model has layers 0..{LAYERS - 1}"),
        (dict(amplify="L0H7"), f"head L0H7 is out of range: the model has heads 0..{HEADS - 1}"),
        (dict(block="L0H1", amplify="L0H1"), "head L0H1 is both blocked and amplified; choose one"),
    ],
)
def test_bad_inline_args_are_one_line_errors(tiny, kwargs, message):
    with pytest.raises(SpecError) as err:
        InterventionSpec.from_inline(model=tiny, **kwargs)
    assert str(err.value) == message


def test_spec_for_another_model_is_refused():
    llava, qwen = build_tiny_model("llava")[0], build_tiny_model("qwen2_vl")[0]
    spec = InterventionSpec.from_inline(model=llava, block="L0H0")
    with pytest.raises(SpecError) as err:
        with apply_spec(qwen, spec):
            pass
    assert str(err.value) == (
        "spec was made for an unnamed model (llava, 3 layers x 4 heads of 8) but the model is "
        "an unnamed model (qwen2_vl, 3 layers x 4 heads of 8); make a spec for this model"
    )
    named = InterventionSpec.from_dict(_document(model=dict(_document()["model"], name="org/llava-a")))
    llava.config._name_or_path = "/models/llava-b"
    with pytest.raises(SpecError, match=r"^spec was made for org/llava-a \(llava, .* but the model is /models/llava-b \("):
        named.validate_against(llava)
    llava.config._name_or_path = "/local/copy/llava-a"
    named.validate_against(llava)  # a local copy of the same hub model is the same model


@pytest.mark.parametrize("family", ["llava"])
@pytest.mark.parametrize("attn", ["sdpa"])
def test_spec_needing_an_empty_group_is_refused(tiny, batch):
    groups = _groups(tiny, batch)
    groups["question"][1] = False
    spec = InterventionSpec.from_dict(_document())
    with pytest.raises(EmptyGroupError) as err:
        with apply_spec(tiny, spec, groups):
            pass
    assert str(err.value) == (
        f"token group 'question' is empty in prompt 1 of the batch but spec {spec.identity()} needs it; "
        "use a task whose prompts contain that part"
    )
    with pytest.raises(EmptyGroupError) as err:
        with apply_spec(tiny, spec):
            pass
    assert str(err.value) == "the spec needs token groups image, question; pass token_groups= built by token_groups()"
