from __future__ import annotations

import pytest
import torch

from exitflow.encoders.base import EncoderInputError
from exitflow.encoders.early_exit_runner import run_early_exit
from exitflow.encoders.evaluation import collect_exit_logits, exit_scores, exits_at
from exitflow.encoders.macs import equal_mac_exit_layers
from exitflow.encoders.presets import vit_config
from exitflow.encoders.vit import ViTEarlyExitEncoder


def test_forcing_last_exit_equals_plain_vit(tiny_vit):
    x = torch.randn(6, 1, 8, 8)
    outs = tiny_vit(x)
    assert [o.layer for o in outs] == list(tiny_vit.exit_layers)
    assert tiny_vit.exit_layers[-1] == 4
    ref = tiny_vit.backbone(x).last_hidden_state
    torch.testing.assert_close(outs[-1].hidden, ref)
    for o in outs:
        assert o.logits.shape == (6, 5) and o.confidence.shape == (6,)
        assert torch.isfinite(o.logits).all()


def test_macs_are_cumulative_and_count_heads(tiny_vit):
    macs = tiny_vit.exit_macs()
    assert macs == sorted(macs) and len(set(macs)) == len(macs)
    heads = tiny_vit.head_macs()
    assert all(h > 0 for h in heads)
    assert macs[-1] == tiny_vit.plain_macs() + sum(heads[:-1])
    state = tiny_vit.start(torch.randn(1, 1, 8, 8))
    assert [tiny_vit.step(state).macs for _ in range(tiny_vit.num_exits)] == macs


def test_equal_mac_spacing():
    assert equal_mac_exit_layers(0, [10] * 12, 4) == (3, 6, 9, 12)
    assert equal_mac_exit_layers(0, [10] * 6, 6) == (1, 2, 3, 4, 5, 6)
    layers = equal_mac_exit_layers(50, [10] * 8, 3)
    assert layers[-1] == 8 and list(layers) == sorted(set(layers))
    with pytest.raises(ValueError):
        equal_mac_exit_layers(0, [10] * 3, 4)


@pytest.mark.slow
def test_batched_exits_equal_batch_of_one(tiny_vit):
    torch.manual_seed(1)
    x = torch.randn(256, 1, 8, 8) * 2
    with torch.no_grad():
        threshold = float(torch.quantile(tiny_vit(x)[0].confidence, 0.5))  # about half leave at exit 0
    batched = run_early_exit(tiny_vit, x, "max_prob", threshold)
    assert 0 < int((batched.exit_index == 0).sum()) < 256
    for i in range(256):
        single = run_early_exit(tiny_vit, x[i : i + 1], "max_prob", threshold)
        assert int(single.exit_index[0]) == int(batched.exit_index[i])
        torch.testing.assert_close(single.logits[0], batched.logits[i], rtol=1e-4, atol=1e-5)
        assert int(single.macs[0]) == int(batched.macs[i])


def test_runner_matches_offline_thresholding(tiny_vit):
    x = torch.randn(64, 1, 8, 8)
    logits = collect_exit_logits(tiny_vit, [x])
    scores = exit_scores(logits)
    for threshold in (0.2, 0.25, 0.3):
        assert (
            run_early_exit(tiny_vit, x, "max_prob", threshold).exit_index.tolist()
            == exits_at(scores, threshold).tolist()
        )


@pytest.mark.parametrize("rule", ["entropy", "patience", "cosine"])
def test_other_rules_run_per_sample(tiny_vit, rule):
    x = torch.randn(16, 1, 8, 8)
    threshold = {"entropy": 0.05, "patience": 1, "cosine": 0.5}[rule]
    batched = run_early_exit(tiny_vit, x, rule, threshold)
    for i in (0, 7, 15):
        assert int(run_early_exit(tiny_vit, x[i : i + 1], rule, threshold).exit_index[0]) == int(
            batched.exit_index[i]
        )


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.randn(2, 3, 8, 8), "shape"),
        (torch.randn(2, 1, 9, 8), "shape"),
        (torch.randn(0, 1, 8, 8), "empty"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_bad_input_raises_encoder_input_error(tiny_vit, bad, match):
    with pytest.raises(EncoderInputError, match=match):
        tiny_vit.start(bad)


def test_single_image_without_batch_dim(tiny_vit):
    assert tiny_vit.start(torch.randn(1, 8, 8)).hidden.shape[0] == 1


def test_presets_and_mlp_ablation_build():
    enc = ViTEarlyExitEncoder(vit_config("image", num_layers=2, num_exits=2, head_type="mlp"))
    assert enc.head_kinds == ["mlp"] and enc.exit_layers == (1, 2)
    assert enc.config.grid == (7, 7)
