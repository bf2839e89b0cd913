from __future__ import annotations

import pytest
import torch
from torch.nn.functional import pad

from interventions.mechanism.knockout import knockout, layer_window
from interventions.mechanism.locate import InterventionError
from interventions.testing.random_init import HEADS, LAYERS, random_batch

EVERY_LAYER = list(range(LAYERS))


def _image_and_text(model, batch, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image positions and text (attended, non-image) positions, masks extended by `extra` generated positions."""
    image = batch["input_ids"] == model.config.image_token_id
    text = batch["attention_mask"].bool() & ~image
    return pad(image, (0, extra), value=False), pad(text, (0, extra), value=True)


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_empty_edge_set_is_bit_identical(tiny, batch):
    base = tiny(**batch).logits
    with knockout(tiny, [], EVERY_LAYER):
        assert _hook_count(tiny) == 0
        out = tiny(**batch).logits
    assert torch.equal(out, base)


def test_edges_that_block_nothing_are_bit_identical(tiny, batch):
    image, text = _image_and_text(tiny, batch)
    base = tiny(**batch).logits
    with knockout(tiny, [(image, torch.zeros_like(text)), (torch.zeros_like(text), text)], EVERY_LAYER):
        out = tiny(**batch).logits
    assert torch.equal(out, base)


@pytest.mark.parametrize("batch_size", [1, 2], ids=["unpadded", "left-padded"])
def test_image_to_text_knockout_hides_the_image_from_text(tiny, batch_size):
    batch = random_batch(tiny, batch_size)
    swapped = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    image, text = _image_and_text(tiny, batch)
    assert not torch.equal(tiny(**batch).logits[text], tiny(**swapped).logits[text])  # the image matters...
    with knockout(tiny, [(text, image)], EVERY_LAYER):
        out, out_swapped = tiny(**batch).logits, tiny(**swapped).logits
    assert torch.equal(out[text], out_swapped[text])  # ...until text cannot attend to it
    assert not torch.equal(out[image], out_swapped[image])


@pytest.mark.parametrize("heads", [None, [1, 3]], ids=["all-heads", "two-heads"])
def test_eager_and_sdpa_agree(tiny_pair, heads):
    out = {}
    for impl, model in tiny_pair.items():
        batch = random_batch(model)
        image, text = _image_and_text(model, batch)
        last = torch.zeros_like(text)
        last[:, -1] = True
        with knockout(model, [(text, image), (last, text)], [1, 2], heads=heads):
            out[impl] = model(**batch).logits[batch["attention_mask"].bool()]
        assert not torch.allclose(out[impl], model(**batch).logits[batch["attention_mask"].bool()])
    torch.testing.assert_close(out["eager"], out["sdpa"], atol=1e-4, rtol=0)


def test_listing_every_head_equals_all_heads(tiny, batch):
    image, text = _image_and_text(tiny, batch)
    with knockout(tiny, [(text, image)], [0, 2]):
        all_heads = tiny(**batch).logits
    with knockout(tiny, [(text, image)], [0, 2], heads=list(range(HEADS))):
        listed = tiny(**batch).logits
    with knockout(tiny, [(text, image)], [0, 2], heads=[0]):
        one = tiny(**batch).logits
    attended = batch["attention_mask"].bool()
    torch.testing.assert_close(listed[attended], all_heads[attended], atol=1e-6, rtol=0)
    assert not torch.allclose(one[attended], all_heads[attended])


def test_a_fully_blocked_query_keeps_its_own_position(tiny_pair):
    """Blocking every key of every query leaves each query attending only to itself: no NaN."""
    out = {}
    for impl, model in tiny_pair.items():
        batch = random_batch(model)
        everything = batch["attention_mask"].bool()
        with knockout(model, [(everything, everything)], EVERY_LAYER):
            out[impl] = model(**batch).logits[everything]
        assert torch.isfinite(out[impl]).all()
    torch.testing.assert_close(out["eager"], out["sdpa"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 2], ids=["unpadded", "left-padded"])
def test_cached_generate_matches_uncached_forward_per_step(tiny, batch_size, greedy):
    """Generated positions are in the query group here, so decode steps are knocked out too."""
    batch = random_batch(tiny, batch_size)
    steps = 4
    image, text = _image_and_text(tiny, batch, extra=steps)
    with knockout(tiny, [(text, image)], [0, 2]):
        tokens, cached = greedy(tiny, batch, steps, cached=True)
        ref_tokens, reference = greedy(tiny, batch, steps, cached=False)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(cached, reference, atol=1e-4, rtol=0)
    _, free = greedy(tiny, batch, steps, cached=False)
    assert not torch.allclose(free[:, -1], reference[:, -1])  # the knockout changes what is generated


def test_hooks_removed_after_exception(tiny, batch):
    image, text = _image_and_text(tiny, batch)
    base = tiny(**batch).logits
    with pytest.raises(RuntimeError, match="boom"):
        with knockout(tiny, [(text, image)], EVERY_LAYER):
            assert _hook_count(tiny) == LAYERS
            raise RuntimeError("boom")
    assert _hook_count(tiny) == 0
    assert torch.equal(tiny(**batch).logits, base)


@pytest.mark.parametrize(
    "center,k,expected", [(5, 3, [4, 5, 6]), (5, 4, [3, 4, 5, 6]), (0, 5, [0, 1, 2]), (9, 9, [5, 6, 7, 8, 9]), (2, 1, [2])]
)
def test_layer_window(center, k, expected):
    assert layer_window(center, k, num_layers=10) == expected


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: layer_window(10, 3, 10), "window centre 10 is out of range: the model has layers 0..9"),
        (lambda: layer_window(3, 0, 10), "window size must be >= 1, not 0"),
    ],
)
def test_bad_window(call, message):
    with pytest.raises(InterventionError) as err:
        call()
    assert str(err.value) == message


@pytest.mark.parametrize("family", ["llava"])
@pytest.mark.parametrize("attn", ["sdpa"])
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(layers=[LAYERS]), f"layer {LAYERS} is out of range: the model has layers 0..{LAYERS - 1}"),
        (dict(layers=[0], heads=[HEADS]), f"head {HEADS} is out of range: the model has heads 0..{HEADS - 1}"),
        (dict(layers=[0], edges=[(torch.ones(2, 3), torch.ones(2, 3))]), "knockout edges must be pairs of bool masks [batch, seq]"),
        (
            dict(layers=[0], edges=[(torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))]),
            "knockout masks differ in shape: (2, 3) vs (2, 4)",
        ),
    ],
)
def test_bad_requests_are_one_line_errors(tiny, kwargs, message):
    kwargs.setdefault("edges", [])
    with pytest.raises(InterventionError) as err:
        with knockout(tiny, **kwargs):
            pass
    assert str(err.value) == message
    assert _hook_count(tiny) == 0


@pytest.mark.parametrize("family", ["llava"])
@pytest.mark.parametrize("attn", ["sdpa"])
def test_batch_size_mismatch_is_an_error(tiny, batch):
    mask = torch.ones(3, batch["input_ids"].shape[1], dtype=torch.bool)
    with pytest.raises(InterventionError, match="^knockout masks have batch size 3, the model got 2$"):
        with knockout(tiny, [(mask, mask)], [0]):
            tiny(**batch)
