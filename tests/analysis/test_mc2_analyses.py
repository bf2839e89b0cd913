"""identify, flow and reproduce on MC² (`--data mc2`, `--data mc2_paper:<model>`), offline.

The real MC² JSON files with stand-in images rendered under their real COCO ids, and tiny
random-init models whose tokenizers are trained on the MC² texts the way real ones are: a
Qwen2.5-VL with a byte-level BPE (every string encodes) and a LLaVA with a SentencePiece-style BPE
without byte fallback (Chinese synonyms are <unk> and drop out).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from interventions import cli
from interventions.analysis.batches import encode_docs, load_image
from interventions.analysis.data import DROP_SHARED, analysis_docs, resolve_data
from interventions.model.encoding import image_string
from interventions.model.loading import load_model
from interventions.testing.tiny_processors import save_tiny_family
from interventions.mechanism.token_groups import image_token_id
from modarb_tasks import mc2

MODELS = {"byte_bpe": "qwen2_5_vl", "sentencepiece": "llava"}
TEXT_PARTS = ("system", "context", "instruction", "question", "constraint")


@pytest.fixture(autouse=True)
def _no_mc2_environment(monkeypatch):
    monkeypatch.delenv(mc2.MC2_JSON_ENV, raising=False)
    monkeypatch.delenv(mc2.MC2_IMAGES_ENV, raising=False)


@pytest.fixture(scope="module")
def coco(mc2_dir, tmp_path_factory) -> Path:
    """A stand-in JPEG for every image id of the MC² files (COCO's file names)."""
    folder = tmp_path_factory.mktemp("coco")
    ids = {record["image_id"] for path in mc2_dir.glob("*.json") for record in json.loads(path.read_text())}
    for i, image_id in enumerate(sorted(ids)):
        Image.new("RGB", (24, 20), (i * 37 % 256, i * 91 % 256, 80)).save(folder / f"COCO_val2014_{image_id}.jpg")
    return folder


@pytest.fixture(scope="module")
def models(mc2_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mc2_models")
    texts = mc2.corpus(mc2_dir)
    return {kind: save_tiny_family(family, root / kind, tokenizer=kind, texts=texts) for kind, family in MODELS.items()}


def _modarb(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- token groups on MC² prompts ----------------------------------------------------------------
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("data", ["mc2", "mc2_paper:qwen2_5_vl_7b"])
def test_mc2_token_groups_cover_every_part_exactly(kind, data, models, coco, mc2_dir):
    model, processor = load_model(models[kind])
    tokenizer = processor.tokenizer
    source = resolve_data(data, str(mc2_dir), str(coco))
    layouts = ("standard", "instruction_after", "system_prompt")
    docs, _ = analysis_docs(source, model.config, tokenizer, 3, ("follow_image", "follow_text", "visual_control"),
                            layouts)
    assert len(docs) >= 9
    batch = encode_docs(model, processor, docs)
    ids, attended = batch.inputs["input_ids"], batch.inputs["attention_mask"].bool()
    image = (ids == image_token_id(model.config)) & attended
    assert torch.equal(batch.groups["image"], image)
    single = processor(text=[image_string(model.config, tokenizer)], images=[[load_image(docs[0]["image"])]],
                       return_tensors="pt")["input_ids"]
    assert (image.sum(1) == (single == image_token_id(model.config)).sum()).all()  # every row: one image's tokens
    for row, doc in enumerate(docs):
        for part in TEXT_PARTS:
            start, end = doc["spans"][part]
            got = tokenizer.decode(ids[row][batch.groups[part][row]])
            want = tokenizer.decode(tokenizer(doc["prompt"][start:end], add_special_tokens=False)["input_ids"])
            assert got.strip() == want.strip(), (kind, doc["layout"], part)
            assert bool(batch.groups[part][row].any()) == (end > start)
        assert sum(batch.groups[g][row].int() for g in ("image", *TEXT_PARTS)).max() == 1
        assert batch.groups["last"][row].nonzero().item() == attended[row].nonzero().max().item()


def test_byte_bpe_keeps_chinese_candidates_and_sentencepiece_drops_them(models, coco, mc2_dir):
    source = resolve_data("mc2_paper:qwen2_5_vl_7b", str(mc2_dir), str(coco))
    counts = {}
    for kind, folder in models.items():
        model, processor = load_model(folder)
        docs, dropped = analysis_docs(source, model.config, processor.tokenizer, 16, ("follow_image",))
        counts[kind] = dropped
        listed = [len(doc["candidates_follow"]) + len(doc["candidates_compete"]) for doc in docs]
        if kind == "byte_bpe":  # the paper's lists, synonyms included, when every string has tokens
            assert max(listed) > 2
        else:  # a side listing only Chinese synonyms falls back to its English answer
            assert any(doc["candidates_follow"] == [doc["answer_image"]] for doc in docs)
        assert len(docs) + sum(n for reason, n in dropped.items() if reason.startswith(("no ", "the "))) == 16
    assert set(counts["byte_bpe"]) <= {DROP_SHARED}


# --- the commands end to end -----------------------------------------------------------------------
@pytest.mark.parametrize("data", ["mc2", "mc2_paper:internvl3_8b"])
def test_identify_and_flow_on_mc2(data, models, coco, tmp_path, capsys, mc2_dir):
    flags = ["--data", data, "--mc2-json", str(mc2_dir), "--mc2-images", str(coco)]
    code, out, err = _modarb(["identify", "--model", str(models["byte_bpe"]), "--out", str(tmp_path / "id"),
                              "--n-items", "8", "--learned-steps", "2", "--curve-heads", "1", *flags], capsys)
    assert code == 0, err
    identified = json.loads((tmp_path / "id" / "identify.json").read_text())
    assert identified["split"] == "analysis" and identified["data"]["data"] == data
    kept = identified["n_follow_docs"] + identified["n_control_docs"]
    assert kept + sum(identified["data"]["dropped"].values()) == 8 * 4 == identified["data"]["docs"] + (
        sum(identified["data"]["dropped"].values()))  # 8 items x 4 task kinds, each kept or counted
    assert "--data " + data in identified["command"]
    code, out, err = _modarb(["flow", "--model", str(models["sentencepiece"]), "--out", str(tmp_path / "flow"),
                              "--n-items", "4", "--layouts", "standard,instruction_after", *flags], capsys)
    assert code == 0, err
    flow = json.loads((tmp_path / "flow" / "flow.json").read_text())
    assert flow["split"] == "analysis" and set(flow["flow"]) == {"standard", "instruction_after"}
    assert all(mc2_id.startswith("mc2-") for side in flow["flow"]["standard"].values() for mc2_id in side["item_ids"])


def _check_report(out: Path, data: str) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["data"] == data and summary["data"]["test_half"] == "test"
    assert summary["data"]["mf_ratio_by_type"]["baseline"]  # per MC² task type
    report = (out / "report.md").read_text()
    assert "## Data" in report and "| question type |" in report and "Docs dropped by identify" in report
    assert '"mc2_half":"test"' in summary["baseline"]["command"]


@pytest.mark.slow
def test_small_reproduce_on_mc2_writes_the_report(models, coco, tmp_path, capsys, mc2_dir):
    out = tmp_path / "report"
    code, _, err = _modarb(["reproduce", "--data", "mc2", "--model", str(models["sentencepiece"]), "--out", str(out),
                            "--limit", "4", "--analysis-items", "4", "--fractions", "0.05", "--draws", "1",
                            "--alphas", "2", "--learned-steps", "2", "--amplify-items", "4",
                            "--mc2-json", str(mc2_dir / "evaluate_final.json"), "--mc2-images", str(coco)], capsys)
    assert code == 0, err
    _check_report(out, "mc2")
    fitted = json.loads((out / "summary.json").read_text())["amplify"]["validation"]
    assert 0 < fitted["failed"] + fitted["followed"] <= 2 * 4  # the gates' validation docs: 4 items per follow task


@pytest.mark.slow
@pytest.mark.parametrize(("data", "kind"), [("mc2_paper:qwen2_5_vl_7b", "byte_bpe"), ("mc2", "sentencepiece")])
def test_acceptance_reproduce_command(data, kind, models, coco, tmp_path, capsys, monkeypatch, mc2_dir):
    """The issue's command, paths from the environment: --limit 16 --analysis-items 16, defaults otherwise."""
    monkeypatch.setenv(mc2.MC2_JSON_ENV, str(mc2_dir))
    monkeypatch.setenv(mc2.MC2_IMAGES_ENV, str(coco))
    out = tmp_path / "report"
    code, _, err = _modarb(["reproduce", "--data", data, "--model", str(models[kind]), "--out", str(out),
                            "--limit", "16", "--analysis-items", "16"], capsys)
    assert code == 0, err
    _check_report(out, data)


# --- bad input: one line, exit 2, before any model is loaded, no output --------------------------
@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr("interventions.model.loading.load_model", refuse)
    monkeypatch.setattr("interventions.model.lm.ModarbVLM.__init__", refuse)


def _partial_coco(mc2_dir: Path, coco: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the stand-in folder without the image of the 3rd analysis item of the benchmark."""
    folder = tmp_path / "partial"
    folder.mkdir()
    items = mc2.load_items(mc2_dir / mc2.BENCHMARK_FILE, n=3, half="analysis")
    for item in items[:2]:
        name = f"COCO_val2014_{item.scene_id}.jpg"
        (folder / name).write_bytes((coco / name).read_bytes())
    return folder, items[2].scene_id


def _chinese_only_benchmark(mc2_dir: Path, tmp_path: Path) -> Path:
    """An MC² benchmark file whose answers are Chinese words only."""
    records = json.loads((mc2_dir / mc2.BENCHMARK_FILE).read_text())[:8]
    for record in records:
        record["answer_vision"], record["answer_text"] = "站立", "行走"
    folder = tmp_path / "chinese"
    folder.mkdir()
    (folder / mc2.BENCHMARK_FILE).write_text(json.dumps(records, ensure_ascii=False))
    return folder


@pytest.mark.parametrize("command", ["identify", "flow", "reproduce"])
def test_bad_mc2_input_is_one_line_and_exit_2(command, models, coco, tmp_path, capsys, no_model_load, mc2_dir):
    partial, missing_id = _partial_coco(mc2_dir, coco, tmp_path)
    cases = [
        (["--data", "mc2", "--mc2-images", str(coco)], "MC² JSON not set: pass --mc2-json"),
        (["--data", "mc2", "--mc2-json", str(tmp_path / "nowhere.json"), "--mc2-images", str(coco)],
         f"MC² JSON not found: {tmp_path / 'nowhere.json'}"),
        (["--data", "mc2", "--mc2-json", str(mc2_dir)], "MC² image folder not set: pass --mc2-images"),
        (["--data", "mc2", "--mc2-json", str(mc2_dir), "--mc2-images", str(tmp_path / "no_coco")],
         f"MC² image folder not found: {tmp_path / 'no_coco'}"),
        (["--data", "mc2", "--mc2-json", str(mc2_dir), "--mc2-images", str(partial)],
         f"MC² image {missing_id} not in {partial}"),
        (["--data", "mc2_paper:gpt4", "--mc2-json", str(mc2_dir), "--mc2-images", str(coco)],
         "unknown paper subset 'mc2_paper:gpt4'; choose mc2_paper:qwen2_5_vl_7b or mc2_paper:internvl3_8b or "
         "mc2_paper:llava_v1_5_7b"),
        (["--data", "coco"], "unknown --data 'coco'"),
        (["--data", "mc2", "--mc2-json", str(_chinese_only_benchmark(mc2_dir, tmp_path)), "--mc2-images", str(coco)],
         "no item's answer candidates have a first token under this model's tokenizer"),
    ]
    counts = ["--limit", "4", "--analysis-items", "4"] if command == "reproduce" else ["--n-items", "4"]
    for flags, start in cases:
        out = tmp_path / f"out_{command}"
        code, stdout, err = _modarb([command, "--model", str(models["sentencepiece"]), "--out", str(out), *counts,
                                     *flags], capsys)
        assert code == 2, (flags, err)
        line = err.strip()
        assert "\n" not in line and line.startswith(f"modarb: error: {start}"), line
        assert not out.exists() and not stdout
