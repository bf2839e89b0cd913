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
from test_cached_generation import GENERATION_SETTINGS, STEPS, _record_generation, _requests, _uncached_logits


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
    requests = _requests(lm.model.config.get_text_config().vocab_size)
    calls, states = _record_generation(lm, monkeypatch)
    lm.generate_until(requests)
    kwargs, out = calls[0]
    inputs = {key: value for key, value in kwargs.items() if key not in GENERATION_SETTINGS}
    generated = out.sequences[:, inputs["input_ids"].shape[1]:]
    assert generated.shape[1] == STEPS
    reference = _uncached_logits(lm, inputs, states[0], generated)
    torch.testing.assert_close(torch.stack(out.logits, 1), reference, atol=1e-4, rtol=0)
    assert not torch.allclose(_uncached_logits(plain, inputs, states[0], generated), reference, atol=1e-4)


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
