"""`hf-modarb` in process on the bundled organism: interventions change (or keep) what lm-eval scores,
image loglikelihood is the model's own, the mixed `modarb` group runs, and the organism is an
ordinary HF model that stock `hf-multimodal` scores like a plain generate loop (issue 3)."""

from __future__ import annotations

import socket

import huggingface_hub
import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.hf_vlms import HFMultimodalLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForImageTextToText, AutoProcessor

from modarb_tasks.errors import ModarbError
from interventions.model.lm import ModarbVLM
from interventions.organism import ORGANISM_NAME
from interventions.organism.answers import generate_answers
from interventions.mechanism.spec import InterventionSpec, KnockoutSpec, model_fingerprint
from modarb_tasks import TASKS_PATH
from modarb_tasks.matching import classify

LIMIT = 24  # docs per subtask in the in-process runs
LOOP_LIMIT = 40  # docs per subtask in the stock-vs-plain-loop comparison
BATCH = 8
FOLLOW_TASKS = ("mf_follow_image", "mf_follow_text")
CONTROL_TASKS = ("mf_visual_control", "mf_language_control")


def _all_heads(layers, heads: int) -> str:
    return ";".join(f"L{layer}H{head}" for layer in layers for head in range(heads))


def _evaluate(model, tasks: list[str], limit: int = LIMIT, **kwargs) -> dict:
    manager = TaskManager(include_path=TASKS_PATH, include_defaults=False, metadata={"shapes_n": max(limit, LOOP_LIMIT)})
    return lm_eval.simple_evaluate(
        model=model, tasks=tasks, limit=limit, task_manager=manager, log_samples=True, **kwargs)


def _responses(run: dict, task: str) -> list[str]:
    """The generated answer of each doc of `task`, in doc order."""
    samples = sorted(run["samples"][task], key=lambda s: s["doc_id"])
    return [s["resps"][0][0] for s in samples]


def _mf_ratio(run: dict) -> float:
    return run["results"]["modality_following"]["mf_ratio,none"]


def _modarb(organism_dir, **model_args) -> ModarbVLM:
    return ModarbVLM(pretrained=str(organism_dir), device="cpu", batch_size=BATCH, **model_args)


@pytest.fixture(scope="module")
def baseline(organism_dir) -> ModarbVLM:
    """hf-modarb without a spec: the plain organism."""
    return _modarb(organism_dir)


@pytest.fixture(scope="module")
def geometry(baseline) -> tuple[int, int]:
    text = baseline.model.config.get_text_config()
    return text.num_hidden_layers, text.num_attention_heads


@pytest.fixture(scope="module")
def baseline_run(baseline) -> dict:
    return _evaluate(baseline, ["modality_following"])


@pytest.fixture(scope="module")
def tasks() -> dict:
    """The follow tasks and the image loglikelihood task, by name, with the docs the runs see."""
    manager = TaskManager(include_path=TASKS_PATH, include_defaults=False, metadata={"shapes_n": LOOP_LIMIT})
    return manager.load(["modality_following", "mf_follow_image_ll"])["tasks"]


def _docs(tasks: dict, name: str, n: int) -> list[dict]:
    return list(tasks[name].test_docs())[:n]


# --- interventions through lm-eval ------------------------------------------------------------


def test_blocking_every_head_changes_mf_ratio_and_answers(organism_dir, geometry, baseline_run):
    layers, heads = geometry
    blocked = _modarb(organism_dir, block=_all_heads(range(layers), heads))
    run = _evaluate(blocked, ["modality_following"])
    assert run["config"]["modarb_spec_name"] == f"block {layers * heads} heads"
    assert _mf_ratio(run) != _mf_ratio(baseline_run)
    for task in FOLLOW_TASKS:
        assert _responses(run, task) != _responses(baseline_run, task), task


def test_scaling_every_head_by_one_gives_the_same_generations(organism_dir, geometry, baseline_run):
    layers, heads = geometry
    unit = _modarb(organism_dir, amplify=_all_heads(range(layers), heads), alpha=1.0)
    assert len(unit.spec.heads) == layers * heads and {h.scale for h in unit.spec.heads} == {1.0}
    run = _evaluate(unit, ["modality_following"])
    for task in FOLLOW_TASKS:
        assert _responses(run, task) == _responses(baseline_run, task), task
    assert run["results"] == baseline_run["results"]


def test_modarb_group_mixes_image_and_text_only_requests(baseline, baseline_run):
    run = _evaluate(baseline, ["modarb"])
    results = run["results"]
    for task in FOLLOW_TASKS:
        assert 0.0 <= results[task]["mf_ratio,none"] <= 1.0
        # routed apart and put back in order: the same answers as the image-only run
        assert _responses(run, task) == _responses(baseline_run, task), task
    for task in CONTROL_TASKS:
        assert 0.0 <= results[task]["acc,none"] <= 1.0
    alone = _evaluate(baseline, ["mf_language_control"])
    assert _responses(run, "mf_language_control") == _responses(alone, "mf_language_control")
    assert results["mf_language_control"]["acc,none"] == alone["results"]["mf_language_control"]["acc,none"]


def _knockout_spec(model) -> InterventionSpec:
    """At every layer no text reads the image, and the answer position reads no other prompt part."""
    layers = model.config.get_text_config().num_hidden_layers
    edges = tuple((query, "image") for query in ("context", "instruction", "question", "constraint", "last"))
    edges += tuple(("last", key) for key in ("context", "instruction", "question"))
    return InterventionSpec(model=model_fingerprint(model), knockout=KnockoutSpec(edges=edges, layers=tuple(range(layers))),
                            provenance={"name": "answer blind"})


@pytest.mark.parametrize("kind", ["positions", "knockout"])
def test_token_group_specs_change_answers_on_a_modarb_task(kind, organism_dir, geometry, baseline, baseline_run, tmp_path):
    layers, heads = geometry
    if kind == "positions":  # the constraint ends the prompt: the answer position loses all its attention
        lm = _modarb(organism_dir, block=_all_heads(range(layers), heads), positions="constraint")
    else:
        lm = _modarb(organism_dir, spec=str(_knockout_spec(baseline.model).save(tmp_path / "knockout.json")))
    assert lm.spec.groups_needed()
    run = _evaluate(lm, ["modality_following"])
    changed = [_responses(run, t) != _responses(baseline_run, t) for t in FOLLOW_TASKS]
    assert any(changed), kind


def test_token_group_spec_on_a_doc_without_spans_is_one_line_error(organism_dir, geometry, tasks):
    layers, heads = geometry
    lm = _modarb(organism_dir, block=_all_heads(range(layers), heads), positions="instruction")
    doc = _docs(tasks, "mf_follow_image", 1)[0]
    foreign = {"question": doc["question"], "image": doc["image"]}  # another task's doc: no prompt spans
    request = Instance(request_type="generate_until", doc=foreign, idx=0,
                       arguments=(doc["prompt"], {"until": ["\n"], "max_gen_toks": 4}, {"visual": [doc["image"]]}))
    with pytest.raises(ModarbError) as error:
        lm.generate_until([request], disable_tqdm=True)
    message = str(error.value)
    assert "\n" not in message
    assert f"spec {lm.spec.identity()} needs token groups ['instruction']" in message
    assert "record no prompt spans; run it on a modarb task" in message


def test_token_group_spec_refuses_text_only_loglikelihood(organism_dir, geometry, tasks):
    """Stock text-only scoring builds no token groups: never reuse the previous batch's masks."""
    layers, heads = geometry
    lm = _modarb(organism_dir, block=_all_heads(range(layers), heads), positions="question")
    doc = _docs(tasks, "mf_follow_image", 1)[0]
    image_request = Instance(request_type="generate_until", doc=doc, idx=0,
                             arguments=(doc["prompt"], {"until": ["\n"], "max_gen_toks": 2}, {"visual": [doc["image"]]}))
    lm.generate_until([image_request], disable_tqdm=True)  # leaves this batch's groups behind
    text_prompt = doc["prompt"].replace("<image>", "")
    text_request = Instance(request_type="loglikelihood", doc=doc | {"prompt": text_prompt}, idx=0,
                            arguments=(text_prompt, " " + doc["answer_text"]))
    with pytest.raises(ModarbError, match=r"needs token groups \['question'\], which hf-modarb builds for generation"):
        lm.loglikelihood([text_request], disable_tqdm=True)


def test_model_info_names_the_spec_without_touching_the_network(organism_dir, baseline, tmp_path, monkeypatch):
    spec = InterventionSpec.from_inline(model=baseline.model, block="L1H2;L3H0")
    spec = InterventionSpec(model=spec.model, heads=spec.heads, provenance={"name": "two heads", "method": "test"})
    lm = _modarb(organism_dir, spec=str(spec.save(tmp_path / "spec.json")))
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    info = lm.get_model_info()
    assert calls == []
    assert info["modarb_spec_identity"] == spec.identity()
    assert info["modarb_spec_name"] == "two heads"
    assert info["modarb_spec"] == spec.to_dict()
    assert info["model_name"] == ORGANISM_NAME
    assert info["model_num_parameters"] == sum(p.numel() for p in baseline.model.parameters())
    assert baseline.get_model_info()["modarb_spec_identity"] == "none"


# --- loglikelihood with images ------------------------------------------------------------------


def _direct_loglikelihood(model, processor, context: str, continuation: str, image) -> tuple[float, bool]:
    """Sum of log-softmax over the continuation's tokens, one unpadded forward, no lm-eval code."""
    full = processor(text=context + continuation, images=[image], return_tensors="pt")
    prefix = processor(text=context, images=[image], return_tensors="pt")["input_ids"][0]
    ids = full["input_ids"][0]
    n = len(ids) - len(prefix)
    assert n >= 1 and torch.equal(ids[: len(prefix)], prefix)
    log_probs = torch.log_softmax(model(**full).logits[0].float(), -1)[-n - 1 : -1]
    targets = ids[-n:]
    return float(log_probs.gather(-1, targets[:, None]).sum()), bool((log_probs.argmax(-1) == targets).all())


def test_image_loglikelihood_is_the_models_own_and_stock_cannot(organism_dir, baseline, tasks):
    task = tasks["mf_follow_image_ll"]
    processor = AutoProcessor.from_pretrained(organism_dir)
    requests = [r for doc in _docs(tasks, "mf_follow_image_ll", 4) for r in task.construct_requests(doc, doc["prompt"])]
    # two more per doc of our own: the model's greedy next word (is_greedy True) and its least likely one
    for doc in _docs(tasks, "mf_follow_image_ll", 2):
        full = processor(text=doc["prompt"], images=[doc["image"]], return_tensors="pt")
        next_logits = baseline.model(**full).logits[0, -1]
        special = torch.tensor(processor.tokenizer.all_special_ids)
        likeliest = next_logits.index_fill(0, special, -torch.inf).argmax()
        unlikeliest = next_logits.index_fill(0, special, torch.inf).argmin()
        for token in (likeliest, unlikeliest):
            word = " " + processor.tokenizer.convert_ids_to_tokens(int(token))
            requests.append(Instance(request_type="loglikelihood", doc=doc, idx=0,
                                     arguments=(doc["prompt"], word, {"visual": [doc["image"]]})))
    assert all(len(r.args) == 3 and r.args[2]["visual"] for r in requests)

    scored = baseline.loglikelihood(requests, disable_tqdm=True)
    for request, (log_prob, greedy) in zip(requests, scored, strict=True):
        context, continuation, aux = request.args
        expected, expected_greedy = _direct_loglikelihood(baseline.model, processor, context, continuation, aux["visual"][0])
        assert log_prob == pytest.approx(expected, abs=1e-4), continuation
        assert greedy == expected_greedy, continuation
    assert [greedy for _, greedy in scored[-4:]] == [True, False, True, False]

    stock = HFMultimodalLM(pretrained=str(organism_dir), device="cpu", batch_size=BATCH)
    with pytest.raises(NotImplementedError):
        stock.loglikelihood(requests[:2], disable_tqdm=True)


# --- issue 3: the organism is an ordinary HF model ---------------------------------------------


def test_stock_hf_multimodal_scores_the_organism_like_a_plain_generate_loop(organism_dir, tasks):
    run = _evaluate("hf-multimodal", ["modality_following"], limit=LOOP_LIMIT,
                    model_args={"pretrained": str(organism_dir), "device": "cpu"}, batch_size=BATCH)
    model = AutoModelForImageTextToText.from_pretrained(organism_dir).eval()
    processor = AutoProcessor.from_pretrained(organism_dir)
    followed = []
    for task in FOLLOW_TASKS:
        docs = _docs(tasks, task, LOOP_LIMIT)
        answers = generate_answers(model, processor, docs, batch_size=BATCH)
        labels = [classify(a, d["candidates_follow"], d["candidates_compete"]) for a, d in zip(answers, docs)]
        harness_labels = [classify(r, d["candidates_follow"], d["candidates_compete"])
                          for r, d in zip(_responses(run, task), docs)]
        assert harness_labels == labels, task
        assert run["results"][task]["mf_ratio,none"] == pytest.approx(labels.count("follow") / len(docs)), task
        followed += [label == "follow" for label in labels]
    assert _mf_ratio(run) == pytest.approx(sum(followed) / len(followed))
