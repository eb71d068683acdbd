"""SmartTrim building blocks: Gumbel-sigmoid masks, token gather, head-sliced attention."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from exitflow.encoders.trim import (
    HeadSlicedAttention,
    HeadTrimmer,
    TokenTrimmer,
    compact_tokens,
    gumbel_sigmoid,
    masked_attention_weights,
)


def _flop_macs(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() // 2


def test_gumbel_sigmoid_eval_is_threshold_and_train_is_straight_through():
    logits = torch.tensor([[-2.0, -0.1, 0.1, 3.0]], requires_grad=True)
    assert gumbel_sigmoid(logits, training=False).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    torch.manual_seed(0)
    mask = gumbel_sigmoid(logits, tau=0.5, training=True)
    assert set(mask.detach().flatten().tolist()) <= {0.0, 1.0}
    mask.sum().backward()
    assert logits.grad is not None and torch.all(logits.grad > 0)


def test_gumbel_sigmoid_keep_rate_follows_sigmoid():
    torch.manual_seed(0)
    logits = torch.full((20000,), 1.0)
    rate = gumbel_sigmoid(logits, tau=1.0, training=True).mean().item()
    assert rate == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.02)


def test_gumbel_sigmoid_rejects_bad_tau():
    with pytest.raises(ValueError, match="tau"):
        gumbel_sigmoid(torch.zeros(2), tau=0.0)


def test_compact_tokens_keeps_order_and_pads_to_longest_row():
    tokens = torch.arange(2 * 5, dtype=torch.float).view(2, 5, 1)
    keep = torch.tensor([[1, 0, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.float)
    out, out_keep = compact_tokens(tokens, keep)
    assert out.shape == (2, 3, 1)
    assert out[0, :, 0].tolist() == [0.0, 2.0, 4.0]
    assert out[1, :2, 0].tolist() == [5.0, 6.0]
    assert out_keep.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_masked_attention_equals_softmax_over_kept_keys():
    torch.manual_seed(0)
    scores = torch.randn(1, 2, 3, 5)
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])
    w = masked_attention_weights(scores, keep)
    ref = torch.softmax(scores[..., [0, 2, 3]], dim=-1)
    torch.testing.assert_close(w[..., [0, 2, 3]], ref)
    assert torch.all(w[..., [1, 4]] == 0)


def test_hard_head_slicing_equals_masked_heads_and_flop_counter_sees_kept_heads():
    torch.manual_seed(0)
    attn = HeadSlicedAttention(dim=16, num_heads=4).eval()
    q, ctx = torch.randn(1, 6, 16), torch.randn(1, 9, 16)
    keep = torch.ones(1, 9)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    soft = attn(q, ctx, keep, mask, hard=False)
    hard = attn(q, ctx, keep, mask, hard=True)
    torch.testing.assert_close(hard, soft)
    full_macs = _flop_macs(lambda: attn(q, ctx, keep, None, hard=True))
    half_macs = _flop_macs(lambda: attn(q, ctx, keep, mask, hard=True))
    assert full_macs == attn.macs(6, 9, 4)
    assert half_macs == attn.macs(6, 9, 2) == full_macs // 2


def test_hard_heads_in_a_batch_match_each_sample_alone():
    torch.manual_seed(1)
    attn = HeadSlicedAttention(dim=16, num_heads=4).eval()
    q, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    keep = torch.ones(2, 7)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    batched = attn(q, ctx, keep, mask, hard=True)
    for b in range(2):
        alone = attn(q[b : b + 1], ctx[b : b + 1], keep[b : b + 1], mask[b : b + 1], hard=True)
        torch.testing.assert_close(batched[b : b + 1], alone)


def test_trimmers_keep_everything_at_initialization():
    torch.manual_seed(0)
    tokens, cls = torch.randn(3, 8, 32), torch.randn(3, 32)
    for mode in ("cross", "local"):
        scores = TokenTrimmer(32, 16, mode)(tokens, cls, cls)
        assert scores.shape == (3, 8) and torch.all(scores > 0)
    heads = HeadTrimmer(32, 4, cross=True)(cls, cls)
    assert heads.shape == (3, 4) and torch.all(heads > 0)


def test_random_head_trimmer_keeps_target_count():
    trimmer = HeadTrimmer(32, 8, cross=False, mode="random")
    trimmer.target = 0.5
    masks = gumbel_sigmoid(trimmer(torch.randn(5, 32), torch.zeros(5, 32)), training=False)
    assert masks.sum(dim=1).tolist() == [4.0] * 5
    assert trimmer.macs() == 0


def test_token_trimmer_macs_match_flop_counter():
    trimmer = TokenTrimmer(32, 16, "cross")
    tokens, cls = torch.randn(1, 7, 32), torch.randn(1, 32)
    assert _flop_macs(lambda: trimmer(tokens, cls, cls)) == trimmer.macs(7)
    local = TokenTrimmer(32, 16, "local")
    assert _flop_macs(lambda: local(tokens, cls, cls)) == local.macs(7)
