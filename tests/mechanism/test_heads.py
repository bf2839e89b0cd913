from __future__ import annotations

import pytest
import torch

from interventions.mechanism.heads import scale_heads
from interventions.mechanism.locate import InterventionError, locate_heads
from interventions.testing.random_init import HEAD_DIM, HEADS, LAYERS, random_batch

ALL_HEADS = [(layer, head) for layer in range(LAYERS) for head in range(HEADS)]


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_scale_one_on_every_head_is_bit_identical(tiny, batch):
    base = tiny(**batch).logits
    with scale_heads(tiny, {head: 1.0 for head in ALL_HEADS}):
        scaled = tiny(**batch).logits
    assert torch.equal(scaled, base)


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 2), (2, 3)])
def test_block_equals_zeroed_o_proj_columns(tiny, batch, layer, head):
    with scale_heads(tiny, {(layer, head): 0.0}):
        blocked = tiny(**batch).logits
    weight = locate_heads(tiny).out_projection(layer).weight
    base = tiny(**batch).logits
    weight.data[:, head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0
    zeroed = tiny(**batch).logits
    assert torch.equal(blocked, zeroed)
    assert not torch.equal(blocked, base)


@pytest.mark.parametrize("scales", [{(1, 2): 0.0}, {(0, 1): 3.0, (2, 0): 0.0}], ids=["block", "amplify+block"])
def test_eager_and_sdpa_agree(tiny_pair, scales):
    """Compared at attended positions: padding rows are fully masked, each backend fills them its own way."""
    out = {}
    for impl, model in tiny_pair.items():
        batch = random_batch(model)
        with scale_heads(model, scales):
            out[impl] = model(**batch).logits[batch["attention_mask"].bool()]
    torch.testing.assert_close(out["eager"], out["sdpa"], atol=1e-4, rtol=0)


def test_last_position_scope_scales_only_the_last_position(tiny, batch):
    base = tiny(**batch).logits
    with scale_heads(tiny, {(LAYERS - 1, 1): 0.0}, positions="last"):
        last_only = tiny(**batch).logits
    assert torch.equal(last_only[:, :-1], base[:, :-1])
    assert not torch.equal(last_only[:, -1], base[:, -1])


def test_mask_scope_scales_only_masked_positions(tiny, batch):
    seq = batch["input_ids"].shape[1]
    mask = torch.zeros(2, seq, dtype=torch.bool)
    mask[:, seq - 3] = True
    base = tiny(**batch).logits
    with scale_heads(tiny, {(0, 1): 0.0, (1, 3): 2.5}, positions=mask):
        masked = tiny(**batch).logits
    earlier = batch["attention_mask"].bool()
    earlier[:, seq - 3 :] = False  # causal: attended positions before the masked one are untouched
    assert torch.equal(masked[earlier], base[earlier])
    assert not torch.equal(masked[:, seq - 3], base[:, seq - 3])


def test_mask_scope_in_cached_generation_uses_absolute_positions(tiny, batch, greedy):
    """A mask covering generated positions scales them in cached generate() as in full forwards."""
    seq = batch["input_ids"].shape[1]
    mask = torch.zeros(2, seq + 3, dtype=torch.bool)
    mask[:, [seq - 1, seq + 1]] = True  # the last prompt position and the second generated token
    scales = {(0, 0): 0.0, (2, 2): 4.0}
    with scale_heads(tiny, scales, positions=mask):
        tokens, cached = greedy(tiny, batch, 3, cached=True)
        ref_tokens, reference = greedy(tiny, batch, 3, cached=False)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=0)
    _, unscaled = greedy(tiny, batch, 3, cached=False)
    assert not torch.allclose(unscaled[:, 0], reference[:, 0]) and not torch.allclose(unscaled[:, 2], reference[:, 2])


def test_hooks_removed_after_exception(tiny, batch):
    before = _hook_count(tiny)
    base = tiny(**batch).logits
    with pytest.raises(RuntimeError, match="boom"):
        with scale_heads(tiny, {(0, 0): 0.0, (1, 1): 2.0}, positions=torch.ones(2, 4, dtype=torch.bool)):
            assert _hook_count(tiny) > before
            raise RuntimeError("boom")
    assert _hook_count(tiny) == before
    assert torch.equal(tiny(**batch).logits, base)


@pytest.mark.parametrize(
    "scales,positions,message",
    [
        ({(LAYERS, 0): 0.0}, None, f"layer {LAYERS} is out of range: the model has layers 0..{LAYERS - 1}"),
        ({(0, HEADS): 0.0}, None, f"head {HEADS} is out of range: the model has heads 0..{HEADS - 1}"),
        ({(0, 0): -1.0}, None, "scale -1.0 must be a finite number >= 0 (0 blocks a head, >1 amplifies)"),
        ({(0, 0): float("nan")}, None, "scale nan must be a finite number >= 0 (0 blocks a head, >1 amplifies)"),
        ({(0, 0): 0.0}, "first", "positions must be None, 'all', 'last' or a bool [batch, seq] mask, not 'first'"),
        ({(0, 0): 0.0}, torch.ones(2, 3), "positions mask must be a bool tensor [batch, seq], got torch.float32 of shape (2, 3)"),
    ],
)
def test_bad_requests_are_one_line_errors(tiny, scales, positions, message):
    before = _hook_count(tiny)
    with pytest.raises(InterventionError) as err:
        with scale_heads(tiny, scales, positions):
            pass
    assert str(err.value) == message
    assert _hook_count(tiny) == before
