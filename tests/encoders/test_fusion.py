"""Fusion transformer: shapes, MuE per-sample exits, SmartTrim hard masks and their MACs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from exitflow.encoders.fusion import (
    FusionInputError,
    FusionTransformer,
    FusionTransformerConfig,
    cosine_to_previous,
)

DIMS = {"image": 24, "audio": 20, "text": 16}


def _model(seed: int = 0, **kwargs) -> FusionTransformer:
    torch.manual_seed(seed)
    cfg = FusionTransformerConfig(modality_dims=DIMS, dim=32, num_layers=3, num_heads=4, **kwargs)
    return FusionTransformer(cfg).eval()


def _inputs(batch: int = 3, seed: int = 1) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    tokens = {
        "image": torch.randn(batch, 10, 24, generator=g),
        "audio": torch.randn(batch, 7, 20, generator=g),
        "text": torch.randn(batch, 5, 16, generator=g),
    }
    lengths = torch.tensor([5, 3, 2, 4, 5, 1])[:batch]
    masks = {"text": (torch.arange(5)[None, :] < lengths[:, None]).float()}
    return tokens, masks


def _make_trimmers_drop(model: FusionTransformer, seed: int = 3) -> None:
    """Random trimmer weights with zero bias: roughly half the tokens and heads go."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (model.token_trimmers, model.head_trimmers):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.0 if p.dim() == 1 else 0.7))


def _flop_macs(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() // 2


def test_shapes_and_no_nan_for_every_subset_of_modalities():
    model = _model()
    tokens, masks = _inputs()
    for present in (["image"], ["audio", "text"], ["image", "audio", "text"]):
        sub = {m: tokens[m] for m in present}
        for train in (True, False):
            model.train(train)
            out = model(sub, masks)
            assert out.logits.shape == (3, 10)
            assert torch.isfinite(out.logits).all()
            assert set(out.exit_layers) == set(present)
            assert len(out.per_layer_logits) == (3 if train else 0)
            assert out.macs.shape == (3,) and torch.all(out.macs > 0)


def test_bad_inputs_raise_with_a_useful_message():
    model = _model()
    tokens, _ = _inputs()
    with pytest.raises(FusionInputError, match="expected"):
        model({"image": torch.randn(2, 4, 5)})
    with pytest.raises(FusionInputError, match="unknown modalities"):
        model({"lidar": torch.randn(2, 4, 24)})
    with pytest.raises(FusionInputError, match="batch"):
        model({"image": tokens["image"], "audio": tokens["audio"][:2]})


def test_training_gradients_reach_trimmers_through_straight_through_masks():
    model = _model().train()
    tokens, masks = _inputs()
    out = model(tokens, masks)
    loss = torch.stack([r.mean() for r in out.token_ratios + out.head_ratios]).sum() + out.logits.sum()
    loss.backward()
    assert model.token_trimmers[0]["image"].proj.weight.grad.abs().sum() > 0
    assert model.head_trimmers[1]["audio/cross"].mlp[-1].weight.grad.abs().sum() > 0


def test_keep_all_trimmed_inference_equals_untrimmed_model():
    model = _model()
    tokens, masks = _inputs()
    trimmed = model(tokens, masks, trim=True, hard=True)
    full = model(tokens, masks, trim=False, hard=False)
    torch.testing.assert_close(trimmed.logits, full.logits)
    assert torch.all(trimmed.kept_token_ratio == 1) and torch.all(trimmed.kept_head_ratio == 1)


def test_hard_masks_equal_soft_masks_and_really_remove_tokens():
    model = _model()
    _make_trimmers_drop(model)
    tokens, masks = _inputs()
    hard = model(tokens, masks, hard=True)
    soft = model(tokens, masks, hard=False)
    torch.testing.assert_close(hard.logits, soft.logits, rtol=1e-4, atol=1e-5)
    assert 0.2 < hard.kept_token_ratio.mean() < 0.9 and 0.2 < hard.kept_head_ratio.mean() < 0.9
    assert hard.hidden["image"].shape[1] < soft.hidden["image"].shape[1]


def test_batched_hard_trimming_equals_batch_of_one():
    model = _model()
    _make_trimmers_drop(model)
    tokens, masks = _inputs(batch=4)
    batched = model(tokens, masks)
    for b in range(4):
        one = model({m: t[b : b + 1] for m, t in tokens.items()}, {m: v[b : b + 1] for m, v in masks.items()})
        torch.testing.assert_close(batched.logits[b : b + 1], one.logits, rtol=1e-4, atol=1e-5)
        assert batched.macs[b] == one.macs[0]


def test_reported_macs_equal_flop_counter_for_one_sample():
    for trim in (False, True):
        model = _model()
        if trim:
            _make_trimmers_drop(model)
        tokens, masks = _inputs(batch=2)
        one = ({m: t[1:2] for m, t in tokens.items()}, {"text": masks["text"][1:2]})
        measured = _flop_macs(lambda model=model, one=one: model(*one))
        reported = int(model(*one).macs[0])
        assert reported == pytest.approx(measured, rel=1e-6)


def test_flop_counter_macs_follow_kept_token_and_head_ratios():
    """One modality, one layer: no cross-attention, so the layer cost is a*n + b*n^2 in kept tokens n
    (projections and FFN linear, attention scores quadratic) and linear in kept heads for attention.
    The measured layer MACs must lie between ratio^2 and ratio times the full layer's."""
    torch.manual_seed(0)
    cfg = FusionTransformerConfig(modality_dims={"image": 24}, dim=32, num_layers=1, num_heads=4)
    model = FusionTransformer(cfg).eval()
    _make_trimmers_drop(model, seed=5)
    x = {"image": torch.randn(1, 40, 24)}
    full = _flop_macs(lambda: model(x, trim=False))
    trimmed = _flop_macs(lambda: model(x, trim=True))
    out = model(x, trim=True)
    block, attn = model.layers[0]["image"], model.layers[0]["image"].self_attn
    fixed = 40 * 24 * 32 + 32 * 10  # input projection + classifier, untouched by trimming
    trimmers = model.token_trimmers[0]["image"].macs(41) + model.head_trimmers[0]["image/self"].macs()
    layer_full, layer_trim = full - fixed, trimmed - fixed - trimmers
    rho, heads = out.kept_token_ratio.item(), out.kept_head_ratio.item()
    n = round(rho * 41)
    attn_part = attn.macs(n, n, 4) * heads
    ffn_part = 2 * n * 32 * block.ffn_hidden
    assert layer_trim == pytest.approx(attn_part + ffn_part, rel=1e-6)
    assert rho**2 * heads * 0.99 <= layer_trim / layer_full <= rho * 1.01


def test_never_exit_threshold_equals_running_all_layers():
    model = _model()
    _make_trimmers_drop(model)
    tokens, masks = _inputs()
    plain = model(tokens, masks)
    never = model(tokens, masks, thresholds={m: 1.5 for m in DIMS})
    torch.testing.assert_close(never.logits, plain.logits)
    for m in DIMS:
        assert never.exit_layers[m].tolist() == [3, 3, 3]
    assert torch.equal(never.macs, plain.macs)


def test_always_exit_threshold_stops_every_stream_after_one_layer():
    model = _model()
    tokens, masks = _inputs()
    out = model(tokens, masks, thresholds={m: -1.0 for m in DIMS})
    full = model(tokens, masks)
    for m in DIMS:
        assert out.exit_layers[m].tolist() == [1, 1, 1]
    assert torch.all(out.macs < full.macs)


def test_mue_exits_are_per_sample_and_batch_equals_batch_of_one():
    model = _model()
    _make_trimmers_drop(model)
    tokens, masks = _inputs(batch=5)
    full = model(tokens, masks)
    # thresholds at the median similarity of each stream: samples and streams stop apart
    thresholds = {m: full.similarity[m].median().item() for m in DIMS}
    batched = model(tokens, masks, thresholds=thresholds)
    layers = torch.stack([batched.exit_layers[m] for m in DIMS])
    assert layers.unique().numel() > 1, "thresholds should make different streams/samples stop apart"
    for b in range(5):
        one = model(
            {m: t[b : b + 1] for m, t in tokens.items()},
            {m: v[b : b + 1] for m, v in masks.items()},
            thresholds=thresholds,
        )
        torch.testing.assert_close(batched.logits[b : b + 1], one.logits, rtol=1e-4, atol=1e-5)
        for m in DIMS:
            assert batched.exit_layers[m][b] == one.exit_layers[m][0]
        assert batched.macs[b] == one.macs[0]
    assert torch.all(batched.macs <= full.macs)


def test_cosine_to_previous_is_per_sample():
    h = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    prev = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    assert cosine_to_previous(h, prev).tolist() == pytest.approx([1.0, 0.0])


def test_fuse_uses_exit_thresholds_and_no_grad():
    model = _model()
    tokens, masks = _inputs()
    model.exit_thresholds = {m: -1.0 for m in DIMS}
    out = model.fuse(tokens, masks)
    assert not out.logits.requires_grad
    assert out.exit_layers["image"].tolist() == [1, 1, 1]


def test_exit_tokens_put_the_pooled_embedding_first_and_extend_the_mask() -> None:
    from exitflow.encoders.base import ExitOutput
    from exitflow.encoders.fusion import exit_tokens

    hidden, emb = torch.randn(2, 5, 8), torch.randn(2, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = ExitOutput(logits=torch.zeros(2, 3), embedding=emb, hidden=hidden, confidence=torch.ones(2), layer=1,
                     exit_index=0, macs=0, attention_mask=mask)
    assert exit_tokens(out, False)[0] is hidden
    tokens, keep = exit_tokens(out, True)
    assert tokens.shape == (2, 6, 8) and torch.equal(tokens[:, 0], emb) and torch.equal(tokens[:, 1:], hidden)
    assert keep.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    wide = ExitOutput(logits=torch.zeros(2, 3), embedding=torch.randn(2, 4), hidden=hidden, confidence=torch.ones(2),
                      layer=1, exit_index=0, macs=0)
    with pytest.raises(FusionInputError, match="embedding width 4"):
        exit_tokens(wide, True)
    # fuse_exits reads exactly those tokens
    fusion = FusionTransformer(FusionTransformerConfig({"a": 8}, num_classes=3, dim=8, num_layers=1, num_heads=2,
                                                       trim_tokens=False, trim_heads=False, exit_embedding_token=True))
    fusion.eval()
    direct = fusion.fuse({"a": tokens}, {"a": keep}).logits
    assert torch.allclose(fusion.fuse_exits({"a": out}).logits, direct)


def test_trim_at_inference_off_runs_the_same_weights_untrimmed() -> None:
    torch.manual_seed(0)
    fusion = FusionTransformer(FusionTransformerConfig({"a": 8, "b": 8}, num_classes=3, dim=8, num_layers=2,
                                                       num_heads=2))
    fusion.eval()
    tokens = {"a": torch.randn(2, 5, 8), "b": torch.randn(2, 4, 8)}
    fusion.trim_at_inference = False
    off = fusion.fuse(tokens)
    full = fusion(tokens, trim=False, hard=True, all_layer_logits=False)
    assert torch.allclose(off.logits, full.logits) and torch.equal(off.macs, full.macs)
    fusion.trim_at_inference = True
    assert torch.equal(fusion.fuse(tokens).macs, fusion(tokens, trim=True, hard=True, all_layer_logits=False).macs)
