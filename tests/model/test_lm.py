"""`hf-modarb` in process on the bundled organism: interventions change (or keep) what lm-eval scores,
image loglikelihood is the model's own, the mixed `modarb` group runs, and the organism is an
ordinary HF model that stock `hf-multimodal` scores like a plain generate loop."""

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
from interventions.mechanism import apply as apply_module, heads as heads_module, knockout as knockout_module
from interventions.mechanism import locate, spec as spec_module
from interventions.mechanism.apply import BatchState
from interventions.model import lm as lm_module
from interventions.model.lm import ModarbVLM
from interventions.organism import ORGANISM_NAME
from interventions.organism.answers import generate_answers
from interventions.mechanism.spec import HeadScale, InterventionSpec, KnockoutSpec, model_fingerprint
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
    """The follow tasks, the text-only control and the image loglikelihood task, by name, with the docs the runs see."""
    manager = TaskManager(include_path=TASKS_PATH, include_defaults=False, metadata={"shapes_n": LOOP_LIMIT})
    return manager.load(["modality_following", "mf_language_control", "mf_follow_image_ll"])["tasks"]


def _docs(tasks: dict, name: str, n: int) -> list[dict]:
    return list(tasks[name].test_docs())[:n]


def _generation(doc: dict, prompt: str | None = None, max_gen_toks: int = 4) -> Instance:
    """A generate_until request for `doc` (its prompt unless `prompt` is given), with its image when the prompt has one."""
    prompt = doc["prompt"] if prompt is None else prompt
    visual = ({"visual": [doc["image"]]},) if "<image>" in prompt else ()
    return Instance(request_type="generate_until", doc=doc, idx=0,
                    arguments=(prompt, {"until": ["\n"], "max_gen_toks": max_gen_toks}, *visual))


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
    with pytest.raises(ModarbError) as error:
        lm.generate_until([_generation(foreign, prompt=doc["prompt"])], disable_tqdm=True)
    message = str(error.value)
    assert "\n" not in message
    assert f"spec {lm.spec.identity()} needs token groups ['instruction']" in message
    assert "record no prompt spans; run it on a modarb task" in message


def test_max_gen_toks_beyond_max_length_is_one_line_error(baseline, tasks):
    doc = _docs(tasks, "mf_language_control", 1)[0]
    with pytest.raises(ModarbError) as error:
        baseline.generate_until([_generation(doc, max_gen_toks=baseline.max_length)], disable_tqdm=True)
    assert str(error.value) == (
        f"max_gen_toks={baseline.max_length} leaves no room for the prompt in max_length={baseline.max_length}; "
        "lower max_gen_toks (the task's generation_kwargs or --gen_kwargs) or raise max_length=")


def test_token_group_spec_refuses_text_only_loglikelihood(organism_dir, geometry, tasks):
    """Stock text-only scoring builds no token groups: never reuse the previous batch's masks."""
    layers, heads = geometry
    lm = _modarb(organism_dir, block=_all_heads(range(layers), heads), positions="question")
    doc = _docs(tasks, "mf_follow_image", 1)[0]
    lm.generate_until([_generation(doc, max_gen_toks=2)], disable_tqdm=True)  # an image batch with groups first
    text_prompt = doc["prompt"].replace("<image>", "")
    text_request = Instance(request_type="loglikelihood", doc=doc | {"prompt": text_prompt}, idx=0,
                            arguments=(text_prompt, " " + doc["answer_text"]))
    with pytest.raises(ModarbError, match=r"needs token groups \['question'\], which hf-modarb builds for generation"):
        lm.loglikelihood([text_request], disable_tqdm=True)


# --- the spec prepared once per load, each batch hooked with its own docs ----------------------


@pytest.fixture
def preparations(monkeypatch) -> dict[str, int]:
    """How often, from here on, a spec is validated against a model and a model's heads are located."""
    calls = {"validated": 0, "located": 0}
    validate, find_heads = InterventionSpec.validate_against, locate.locate_heads

    def counted_validate(self, *args, **kwargs):
        calls["validated"] += 1
        return validate(self, *args, **kwargs)

    def counted_locate(model):
        calls["located"] += 1
        return find_heads(model)

    monkeypatch.setattr(InterventionSpec, "validate_against", counted_validate)
    for module in (spec_module, heads_module, knockout_module, apply_module, lm_module):
        monkeypatch.setattr(module, "locate_heads", counted_locate)
    return calls


@pytest.fixture
def hooked(monkeypatch) -> list[BatchState]:
    """The BatchState of every batch hf-modarb hooks from here on, in order."""
    states = []

    def recording(prepared, batch=None):
        states.append(batch)
        return apply_module.apply_prepared(prepared, batch)

    monkeypatch.setattr(lm_module, "apply_prepared", recording)
    return states


def test_spec_is_validated_and_heads_located_once_per_load(organism_dir, baseline, tasks, tmp_path, preparations, hooked):
    """Seven batches (image and text-only generation, image loglikelihood) under a spec with scaled heads
    on the question and a knockout: one validation and one head search, when the model loads."""
    spec = InterventionSpec(model=model_fingerprint(baseline.model), heads=(HeadScale(3, 4, 0.0), HeadScale(2, 1, 3.0)),
                            positions="question", knockout=KnockoutSpec(edges=(("last", "question"),), layers=(2, 3)))
    path = spec.save(tmp_path / "spec.json")
    preparations.update(validated=0, located=0)  # model_fingerprint above located the heads
    lm = ModarbVLM(pretrained=str(organism_dir), device="cpu", batch_size=2, spec=str(path))
    assert preparations == {"validated": 1, "located": 1}
    lm.generate_until([_generation(doc) for doc in _docs(tasks, "mf_follow_image", 5)], disable_tqdm=True)
    lm.generate_until([_generation(doc) for doc in _docs(tasks, "mf_language_control", 3)], disable_tqdm=True)
    scored = tasks["mf_follow_image_ll"]
    lm.loglikelihood([r for doc in _docs(tasks, "mf_follow_image_ll", 2) for r in scored.construct_requests(doc, doc["prompt"])],
                     disable_tqdm=True)
    assert [len(state.docs) for state in hooked] == [2, 2, 1, 2, 1, 2, 2]
    assert all(set(state.token_groups) >= {"question", "last"} for state in hooked)
    assert preparations == {"validated": 1, "located": 1}
    _modarb(organism_dir, block="L1H2;L3H0", positions="question")  # inline heads: the same once per load
    assert preparations == {"validated": 2, "located": 2}
    lm.spec = None  # swapping the spec of a loaded model prepares the new one, once
    lm.spec = spec
    assert preparations == {"validated": 3, "located": 3}


def test_each_batch_is_hooked_with_exactly_its_own_docs(organism_dir, baseline, tasks, tmp_path, hooked):
    """Six requests in three batches, one the twin of another (same prompt, same image) whose recorded
    spans swap instruction and question: every batch's knockout follows the docs of its own rows, so
    the run answers as running each batch alone does, and the twin's answer is not its original's."""
    spec = InterventionSpec(model=model_fingerprint(baseline.model),
                            knockout=KnockoutSpec(edges=(("last", "instruction"),), layers=tuple(range(6))))
    lm = ModarbVLM(pretrained=str(organism_dir), device="cpu", batch_size=2, spec=str(spec.save(tmp_path / "spec.json")))
    docs = _docs(tasks, "mf_follow_image", 5)
    spans = docs[0]["spans"]
    docs.append(dict(docs[0], spans=dict(spans, instruction=spans["question"], question=spans["instruction"])))
    requests = [_generation(doc, max_gen_toks=6) for doc in docs]
    answers = lm.generate_until(requests, disable_tqdm=True)
    batches = [state.docs for state in hooked]
    assert len(batches) == 3 and sorted(id(doc) for batch in batches for doc in batch) == sorted(map(id, docs))
    request_of = {id(request.doc): request for request in requests}
    answer_of = {id(doc): answer for doc, answer in zip(docs, answers, strict=True)}
    for batch in batches:
        alone = lm.generate_until([request_of[id(doc)] for doc in batch], disable_tqdm=True)
        assert alone == [answer_of[id(doc)] for doc in batch]
    assert answers[5] != answers[0]


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


# --- the organism is an ordinary HF model ----------------------------------------------------


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
