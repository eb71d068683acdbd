"""Exiting decoder: the decaying threshold, per-step exits, caches of skipped layers, MACs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from exitflow.encoders.decoder import DecoderConfig, ExitingDecoder, decaying_threshold


def _decoder(seed: int = 0) -> ExitingDecoder:
    torch.manual_seed(seed)
    return ExitingDecoder(DecoderConfig(vocab_size=13, dim=32, num_layers=4, num_heads=4, max_len=6)).eval()


def _memory(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 9, 32, generator=g), torch.ones(batch, 9)


@pytest.mark.parametrize(
    ("t", "n", "theta", "beta", "tau"),
    [(0, 8, 0.9, 0.9, 1.0), (3, 8, 0.9, 0.9, 1.0), (7, 8, 0.5, 0.6, 2.0), (10, 10, 0.8, 0.0, 0.5)],
)
def test_decaying_threshold_matches_formula(t, n, theta, beta, tau):
    expected = beta * theta + (1 - beta) * math.exp(-tau * t / n)
    assert decaying_threshold(t, n, theta, beta, tau) == pytest.approx(expected, rel=1e-12)


def test_decaying_threshold_starts_at_mix_and_decays_to_beta_theta():
    assert decaying_threshold(0, 5, 0.8, 0.9, 1.0) == pytest.approx(0.9 * 0.8 + 0.1)
    values = [decaying_threshold(t, 5, 0.8, 0.9, 3.0) for t in range(6)]
    assert all(a > b for a, b in zip(values[:-1], values[1:], strict=True))
    assert decaying_threshold(10_000, 5, 0.8, 0.9, 3.0) == pytest.approx(0.72)
    with pytest.raises(ValueError):
        decaying_threshold(0, 0, 0.8, 0.9, 1.0)


def test_teacher_forcing_shapes_and_no_nan():
    dec = _decoder()
    memory, keep = _memory()
    inputs = torch.randint(0, 13, (3, 7))
    logits = dec(inputs, memory, keep)
    assert len(logits) == 4 and all(lg.shape == (3, 7, 13) and torch.isfinite(lg).all() for lg in logits)


def test_generation_without_exits_equals_teacher_forced_greedy():
    dec = _decoder()
    memory, keep = _memory()
    out = dec.generate(memory, keep, theta=None)
    assert out.layers.eq(4).all()
    inputs = torch.cat([torch.full((3, 1), 1), out.tokens[:, :-1]], dim=1)
    greedy = dec(inputs, memory, keep)[-1].argmax(dim=-1)
    assert torch.equal(greedy, out.tokens)


def test_theta_above_one_never_exits_and_warmup_blocks_exits():
    dec = _decoder()
    memory, keep = _memory()
    plain = dec.generate(memory, keep, theta=None)
    never = dec.generate(memory, keep, theta=1.5, beta=1.0)
    assert torch.equal(never.tokens, plain.tokens) and never.layers.eq(4).all()
    always = dec.generate(memory, keep, theta=-1.0, beta=1.0, warmup_fraction=3 / 7)
    warm = 3  # steps t < 3/7 * 7
    assert always.layers[:, :warm].eq(4).all()
    assert always.layers[:, warm:].eq(1).all()
    assert always.thresholds[:warm] == [math.inf] * warm
    assert torch.all(always.macs < plain.macs)


def test_per_sample_exits_in_a_batch_equal_batch_of_one():
    dec = _decoder()
    memory, keep = _memory(batch=4)
    sims = dec.generate(memory, keep, theta=None).similarity[:, :, :-1]
    kwargs = {"theta": sims.median().item(), "beta": 1.0, "tau": 1.0, "warmup_fraction": 0.0}
    batched = dec.generate(memory, keep, **kwargs)
    assert batched.layers.unique().numel() > 1
    for b in range(4):
        one = dec.generate(memory[b : b + 1], keep[b : b + 1], **kwargs)
        assert torch.equal(one.tokens[0], batched.tokens[b])
        assert torch.equal(one.layers[0], batched.layers[b])
        assert one.macs[0] == batched.macs[b]


def test_generation_macs_match_flop_counter():
    dec = _decoder()
    memory, keep = _memory(batch=1)
    for theta in (None, 0.3):
        counter = FlopCounterMode(display=False)
        with counter:
            out = dec.generate(memory, keep, theta=theta, beta=0.5, warmup_fraction=0.0)
        assert int(out.macs[0]) == counter.get_total_flops() // 2


def test_skipped_layer_caches_hold_the_exited_state():
    """Reference: per layer, a causal pass over a sequence whose rows are the layer input where the
    step ran the layer and the state it exited with where it did not (the copied-up state)."""
    dec = _decoder()
    memory, keep = _memory(batch=1)
    plan = torch.tensor([[4, 1, 2, 4, 1, 4]])
    out = dec.generate(memory, keep, forced_layers=plan)
    assert torch.equal(out.layers, plan)
    inputs = torch.cat([torch.tensor([[1]]), out.tokens[:, :-1]], dim=1)  # (1, T)
    x = dec.embed(inputs) + dec.pos[:6]  # (1, T, D)
    with torch.no_grad():
        for j, layer in enumerate(dec.layers):
            keys, values = layer.self_kv(x)
            y = layer(x, keys, values, layer.memory_kv(memory), keep, causal=True)
            runs = (plan[0] > j)[None, :, None]  # steps that run layer j + 1
            x = torch.where(runs, y, x)
        ref_logits = dec.head(dec.norm(x))
    torch.testing.assert_close(ref_logits, out.logits, rtol=1e-4, atol=1e-5)
    no_copy = dec.generate(memory, keep, theta=None)
    assert not torch.equal(no_copy.layers, out.layers)
