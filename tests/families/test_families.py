"""identify, flow and reproduce on every family hf-modarb evaluates (tiny random-init models) and on the organism.

The analyses encode docs through interventions.model.encoding, as hf-modarb does; these tests check the
token groups against the processor's expanded input ids, family by family, and that every
command runs end to end.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from interventions.analysis.batches import encode_docs
from interventions.analysis.defaults import FlowConfig, IdentifyConfig
from interventions.analysis.flow_run import run_flow
from interventions.analysis.identify import run_identify
from interventions.analysis.reproduce import ReproduceConfig, reproduce
from interventions.cli import main
from interventions.families import DEFAULT_LAYOUT, FAMILIES, family_layout, family_record, get_family
from interventions.mechanism.locate import locate_heads
from interventions.model.encoding import IMAGE_STRINGS, image_string
from interventions.model.loading import load_model
from interventions.organism import organism_path
from interventions.testing.random_init import TINY_FAMILIES, build_tiny_model
from interventions.testing.tiny_processors import save_tiny_family
from modarb_tasks.errors import ModarbError
from interventions.mechanism.spec import InterventionSpec
from interventions.mechanism.token_groups import image_token_id
from modarb_tasks.docs import to_doc
from modarb_tasks.shapes import make_items

MODELS = (*TINY_FAMILIES, "organism")
TEXT_PARTS = ("system", "context", "instruction", "question", "constraint")


def test_every_record_names_a_distinct_model_type():
    assert len({record.model_type for record in FAMILIES}) == len(FAMILIES) == len(TINY_FAMILIES)
    for record in FAMILIES:
        assert family_record(record.model_type) is get_family(record.model_type) is record


def test_a_family_without_a_record_gets_the_defaults():
    assert family_record("mllama") is None and family_layout("mllama") == DEFAULT_LAYOUT
    assert family_layout("smolvlm").decoder_path == "model.text_model"
    with pytest.raises(ModarbError, match=r"no family record for 'llava2'; choose one of llava, "):
        get_family("llava2")


def test_the_image_strings_are_the_records_where_they_differ_from_the_image_token():
    assert IMAGE_STRINGS == {"qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
                             "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
                             "gemma3": "<start_of_image>"}


def test_internvl_is_a_real_architecture_with_its_decoder_where_the_default_layout_says():
    model = build_tiny_model("internvl")[0]
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    heads = locate_heads(model)
    assert (heads.num_layers, heads.num_heads, heads.num_kv_heads) == (3, 4, 2)
    assert heads.attentions[0] is model.model.language_model.layers[0].self_attn


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: save_tiny_family(family, root / family) for family in TINY_FAMILIES} | {"organism": organism_path()}


@pytest.fixture(scope="module")
def layout_docs():
    """Follow docs in all three layouts plus both controls, of two validation items."""
    items = make_items("validation", 2)
    docs = [to_doc(item, kind, layout) for layout in ("standard", "instruction_after", "system_prompt")
            for kind in ("follow_image", "follow_text") for item in items]
    return docs + [to_doc(item, kind) for kind in ("visual_control", "language_control") for item in items]


@pytest.mark.parametrize("name", MODELS)
def test_token_groups_cover_the_expanded_ids_exactly(name, folders, layout_docs):
    model, processor = load_model(folders[name])
    tokenizer = processor.tokenizer
    image_id = image_token_id(model.config)
    image_docs = [d for d in layout_docs if d["image"] is not None]
    text_docs = [d for d in layout_docs if d["image"] is None]
    for docs in (image_docs, text_docs):
        batch = encode_docs(model, processor, docs)
        ids, attended = batch.inputs["input_ids"], batch.inputs["attention_mask"].bool()
        counts = (ids == image_id).sum(1)
        assert torch.equal(batch.groups["image"], (ids == image_id) & attended)
        if docs is image_docs:  # every image expanded to the same (family-specific) number of tokens
            assert counts.min() == counts.max() > 1
            logits = model(**batch.inputs, logits_to_keep=1).logits  # the model accepts that many image tokens
            assert logits.shape[0] == len(docs)
        else:
            assert counts.sum() == 0
        for row, doc in enumerate(docs):
            assert batch.groups["last"][row].nonzero().item() == attended[row].nonzero().max().item()
            for part in TEXT_PARTS:
                start, end = doc["spans"][part]
                tokens = tokenizer.convert_ids_to_tokens(ids[row][batch.groups[part][row]].tolist())
                assert tokens == tokenizer.tokenize(doc["prompt"][start:end]), (name, part)
            covered = sum(batch.groups[g][row] for g in ("image", *TEXT_PARTS))
            assert covered.max() <= 1  # no token in two groups


def test_the_image_string_is_the_one_the_processor_expands(folders):
    for name in ("qwen2_5_vl", "gemma3", "llava", "organism"):
        model, processor = load_model(folders[name])
        text = image_string(model.config, processor.tokenizer)
        assert text in processor.tokenizer.chat_template or name == "organism"
        expanded = processor(text=[text], images=[[make_items("validation", 1)[0].image]], return_tensors="pt")
        assert (expanded["input_ids"] == image_token_id(model.config)).sum() > 1


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_identify_and_flow_run_on_every_family(name, folders, tmp_path):
    model, processor = load_model(folders[name])
    identified = run_identify(model, processor, tmp_path / "identify",
                              IdentifyConfig(top=0.1, n_items=2, batch_size=4, learned_steps=2, curve_heads=1),
                              progress=False)
    assert identified.spec_heads and (tmp_path / "identify" / "spec_top10.json").is_file()
    assert identified.result.n_follow_docs == 4 and identified.result.n_control_docs == 4
    flow = run_flow(model, processor, tmp_path / "flow", FlowConfig(n_items=2, batch_size=4, layouts=("standard",)),
                    progress=False)
    written = json.loads((tmp_path / "flow" / "flow.json").read_text())
    assert written["window"] == flow.window >= 1
    assert {side: part["n"] for side, part in written["flow"]["standard"].items()} == {"image": 2, "text": 2}
    assert any(edge for part in written["flow"]["standard"].values() for edge in part["edges"])


# Whole reproduces on the families whose inputs take different paths: the organism (the default), LLaVA (lm-eval's
# flat image list), Qwen2.5-VL (image tokens that grow with the image, multimodal rotary positions) and PaliGemma
# (prefix attention; text-only prompts go through the tokenizer alone). Every family also runs identify, eval
# under the spec it wrote, and flow (the test below), so what a reproduce adds is checked once per input path.
REPRODUCED = ("organism", "llava", "qwen2_5_vl", "paligemma")


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRODUCED)
def test_small_reproduce_runs_on_each_input_path(name, folders, tmp_path):
    out = tmp_path / "report"
    config = ReproduceConfig(model=None if name == "organism" else str(folders[name]), out=out, limit=2,
                             batch_size=8, top=0.1, fractions=(0.1,), draws=1, alphas=(2.0,), analysis_items=2,
                             amplify_items=2, learned_steps=2, device="cpu")
    summary = reproduce(config)
    written = json.loads((out / "summary.json").read_text())
    assert (out / "report.md").is_file() and written["baseline"] == summary["baseline"]
    assert all(0.0 <= summary["baseline"][key] <= 1.0 for key in ("mf_ratio", "visual_control"))


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_the_identify_eval_and_flow_commands_run_on_every_family(name, folders, tmp_path, monkeypatch):
    """What a user types on a new model: identify its heads, evaluate under the spec it wrote, trace the flow."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # `modarb eval` hands lm-eval its arguments through sys.argv
    folder, out = str(folders[name]), tmp_path
    assert main(["identify", "--model", folder, "--out", str(out / "identify"), "--n-items", "2", "--batch-size", "4",
                 "--no-exact", "--learned-steps", "2", "--curve-heads", "0"]) == 0
    spec = InterventionSpec.load(out / "identify" / "spec_top5.json")
    assert main(["eval", "--model", "hf-modarb", "--model_args", f"pretrained={folder},spec={out}/identify/spec_top5.json",
                 "--tasks", "modality_following", "--limit", "2", "--device", "cpu", "--batch_size", "4",
                 "--output_path", str(out / "eval")]) == 0
    [results_file] = (out / "eval").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["modarb_spec_identity"] == spec.identity()
    assert {task: n["effective"] for task, n in results["n-samples"].items()} == {"mf_follow_image": 2, "mf_follow_text": 2}
    assert 0.0 <= results["results"]["modality_following"]["mf_ratio,none"] <= 1.0
    assert main(["flow", "--model", folder, "--out", str(out / "flow"), "--n-items", "2", "--batch-size", "4",
                 "--layouts", "standard"]) == 0
    assert json.loads((out / "flow" / "flow.json").read_text())["flow"]["standard"]


@pytest.mark.parametrize("name", MODELS)
def test_hf_modarb_and_the_analyses_give_the_model_the_same_inputs(name, folders, layout_docs):
    """The eval path (hf-modarb's encoder) and the analyses' encoder are one function: same ids, same pixels."""
    from interventions.model.lm import ModarbVLM

    lm = ModarbVLM(pretrained=str(folders[name]), batch_size=4, device="cpu")
    docs = [d for d in layout_docs if d["image"] is not None][:4]
    evaluated = lm.tok_batch_multimodal_encode([d["prompt"] for d in docs], [[d["image"]] for d in docs])
    analysed = encode_docs(lm.model, lm.processor, docs).inputs
    assert set(evaluated) == set(analysed)
    for key, value in analysed.items():
        assert torch.equal(evaluated[key], value), key
