"""Inline steering model args of hf-modarb: checked before weights load, applied during cached generation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from interventions.mechanism.steer import hidden_size
from interventions.model.lm import ModarbVLM, spec_name
from interventions.model.model_args import check_cli_model_args
from interventions.testing.random_init import build_tiny_model
from interventions.testing.tiny_processors import save_tiny_family
from modarb_tasks.errors import ModarbError
from generation_recording import GENERATION_SETTINGS, STEPS, generate_requests, record_generation, uncached_logits


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_family("llava", tmp_path_factory.mktemp("llava"), attn_implementation="eager")


def _vector_file(folder, width: int, name: str = "v.safetensors", fill: float = 1.0):
    path = folder / name
    save_file({"direction": torch.randn(width, generator=torch.Generator().manual_seed(0)) * fill}, str(path))
    return path


@pytest.mark.parametrize("positions", ["all", "last", "instruction"])
def test_inline_steering_under_cached_generate_matches_uncached_forwards(positions, tiny_folder, monkeypatch, tmp_path):
    plain = ModarbVLM(pretrained=str(tiny_folder), device="cpu", batch_size=3)
    vector = _vector_file(tmp_path, hidden_size(plain.model))
    lm = ModarbVLM(pretrained=str(tiny_folder), device="cpu", batch_size=3, steer=str(vector), steer_layer=1,
                   steer_alpha=3.0, steer_positions=positions)
    assert lm.spec.steering.layers == (1,) and spec_name(lm.spec) == f"steer L1 x3 at {positions}"
    requests = generate_requests(lm.model.config.get_text_config().vocab_size)
    calls, states = record_generation(lm, monkeypatch)
    lm.generate_until(requests)
    kwargs, out = calls[0]
    inputs = {key: value for key, value in kwargs.items() if key not in GENERATION_SETTINGS}
    generated = out.sequences[:, inputs["input_ids"].shape[1]:]
    assert generated.shape[1] == STEPS
    reference = uncached_logits(lm, inputs, states[0], generated)
    torch.testing.assert_close(torch.stack(out.logits, 1), reference, atol=1e-4, rtol=0)
    assert not torch.allclose(uncached_logits(plain, inputs, states[0], generated), reference, atol=1e-4)


def test_bad_inline_steering_is_one_line_before_weights_load(tmp_path):
    width = hidden_size(build_tiny_model("llava")[0])
    good = _vector_file(tmp_path, width)
    nan = _vector_file(tmp_path, width, "nan.safetensors", fill=float("nan"))
    pickle = tmp_path / "v.pt"
    torch.save(torch.ones(width), pickle)
    cases = [
        ({"steer_layer": 1}, "steer_layer=1 applies to a steering vector, but none is given"),
        ({"steer": str(good), "steer_alpha": 1.0}, "steer_layer=None must be a decoder layer number"),
        ({"steer": str(good), "steer_layer": 1, "steer_alpha": "big"}, "steer_alpha=big must be a finite number"),
        ({"steer": str(good), "steer_layer": 1, "steer_alpha": 1, "steer_positions": "answer"},
         "steer_positions=answer is not a position scope"),
        ({"steer": str(pickle), "steer_layer": 1, "steer_alpha": 1}, "must be a .safetensors file"),
        ({"steer": str(tmp_path / "none.safetensors"), "steer_layer": 1, "steer_alpha": 1}, "does not exist"),
        ({"steer": str(nan), "steer_layer": 1, "steer_alpha": 1}, "non-finite"),
        ({"steer": str(good), "steer_layer": 1, "steer_alpha": 1, "spec": "s.json"}, "give either spec=<file> or inline steer="),
    ]
    for args, message in cases:
        with pytest.raises(ModarbError, match=message):
            check_cli_model_args(args)


def test_a_vector_of_the_wrong_width_or_a_layer_out_of_range_stops_before_any_request(tiny_folder, tmp_path):
    model = build_tiny_model("llava")[0]
    wrong = _vector_file(tmp_path, hidden_size(model) + 2)
    with pytest.raises(ModarbError, match=f"but the model's hidden size is {hidden_size(model)}"):
        ModarbVLM(pretrained=str(tiny_folder), device="cpu", steer=str(wrong), steer_layer=0, steer_alpha=1)
    good = _vector_file(tmp_path, hidden_size(model), "good.safetensors")
    layers = model.config.get_text_config().num_hidden_layers
    with pytest.raises(ModarbError, match=f"layer {layers} is out of range"):
        ModarbVLM(pretrained=str(tiny_folder), device="cpu", steer=str(good), steer_layer=layers, steer_alpha=1)


# --- modarb steer -------------------------------------------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["--directions", "colour"], "--directions 'colour': choose from modality, following, modality_pc1"),
    (["--alphas", "1,x"], "--alphas '1,x' must be comma-separated numbers"),
    (["--alphas", "nan"], "--alphas 'nan' must list at least one finite number"),
    (["--layers", "-1"], "--layers '-1' must be decoder layer numbers >= 0"),
    (["--n-items", "0"], "--n-items 0 must be at least 1"),
])
def test_modarb_steer_refuses_bad_flags_in_one_line(argv, message, tmp_path, capsys):
    from interventions import cli

    assert cli.main(["steer", "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"modarb: error: {message}"] and not (tmp_path / "s").exists()


def test_validation_rates_at_alpha_zero_change_nothing_and_the_best_setting_is_chosen(organism_dir, monkeypatch):
    from interventions.analysis.batches import iter_batches
    from interventions.analysis.data import CONTROL_KINDS, FOLLOW_KINDS, DataSource, analysis_docs
    from interventions.analysis.identify import split_docs
    from interventions.analysis.objective import Objective
    from interventions.analysis.amplify import control_drops, follow_rates
    from interventions.analysis.steer import SteerOptions, choose_setting, fit_directions
    from interventions.mechanism.steer import steer
    from interventions.model.loading import load_model

    model, processor = load_model(None)
    docs, _ = analysis_docs(DataSource(), model.config, processor.tokenizer, 12, (*FOLLOW_KINDS, *CONTROL_KINDS))
    follow, control = split_docs(docs)
    objective = Objective(model, list(iter_batches(model, processor, follow, 16)),
                          list(iter_batches(model, processor, control, 16)))
    vectors = fit_directions(objective, "last", ("modality", "modality_pc1"))
    assert vectors["modality"].shape == (model.config.get_text_config().num_hidden_layers,
                                         model.config.get_text_config().hidden_size)
    torch.testing.assert_close(vectors["modality_pc1"].norm(dim=-1), vectors["modality"].norm(dim=-1))
    assert bool(((vectors["modality_pc1"] * vectors["modality"]).sum(-1) >= 0).all())
    options = SteerOptions(alphas=(0.0, 1.0, -1.0, 4.0), layers=(1, 3))
    monkeypatch.setattr("interventions.analysis.amplify.CONTROL_ROUND", 1)  # one setting's controls at a time
    chosen = choose_setting(objective, vectors["modality"], options)
    unchanged = [point for point in chosen["tried"] if point["alpha"] == 0.0]
    assert len(unchanged) == 2 and len(chosen["tried"]) == 8
    for point in unchanged:
        assert point["restored"] == point["broken"] == 0 and point["bound"] == 0.0
    # the controls are skipped only where they cannot change the choice: every setting scored in full picks the same
    full = []
    for point in chosen["tried"]:
        def hooks(point=point):
            return steer(model, vectors["modality"][point["layer"]], [point["layer"]], point["alpha"], "last")
        full.append(control_drops(objective, [hooks], follow_rates(objective, [hooks]))[0] | point)
        if "value" in point:
            assert full[-1]["value"] == point["value"] <= point["bound"]
        else:
            assert full[-1]["value"] <= point["bound"] < chosen["validation"]["value"]
    best = max(full, key=lambda point: (point["value"], -abs(point["alpha"])))
    assert (chosen["layer"], chosen["alpha"], chosen["validation"]["value"]) == (best["layer"], best["alpha"], best["value"])
    assert any("value" not in point for point in chosen["tried"]), "alpha 4 breaks enough to be pruned"


@pytest.mark.slow
def test_modarb_steer_writes_specs_that_load_and_test_numbers_that_add_up(organism_dir, tmp_path, capsys):
    import json

    from interventions import cli
    from interventions.mechanism.spec import InterventionSpec

    out = tmp_path / "steer"
    assert cli.main(["steer", "--out", str(out), "--n-items", "12", "--limit", "10", "--layers", "1,3",
                     "--alphas=-0.5,0.5", "--directions", "following"]) == 0
    summary = json.loads((out / "steer.json").read_text())
    [setting] = summary["settings"]
    assert (setting["layer"], setting["alpha"]) in {(1, -0.5), (1, 0.5), (3, -0.5), (3, 0.5)}
    assert setting["validation"]["value"] == max(point.get("value", point["bound"]) for point in setting["tried"])
    spec = InterventionSpec.load(out / setting["spec"])
    assert spec.identity() == setting["identity"] and spec.steering.layers == (setting["layer"],)
    test = setting["test"]
    assert test["failed"] + test["followed"] == 20 and 0 <= test["restored"] <= test["failed"]
    assert 0.0 <= test["other"] <= 1.0
    assert "steer following" in (out / "steer.md").read_text()
    assert f"steer following: layer {setting['layer']}" in capsys.readouterr().out
    entries = tmp_path / "entries"
    assert cli.main(["leaderboard", "add", "--entries", str(entries), str(out / "runs" / "steer_following")]) == 0
    [entry] = [json.loads(path.read_text()) for path in entries.glob("*.json")]
    assert entry["intervention"] == {"identity": setting["identity"],
                                     "name": f"steer following L{setting['layer']} x{setting['alpha']:g}"}
