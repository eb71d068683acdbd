from __future__ import annotations

import numpy as np
import pytest
import torch

from exitflow.encoders.checkpoint import CheckpointLoadError, load_encoder, save_encoder, write_model_card
from exitflow.encoders.evaluation import best_within, per_exit_accuracy, speedup_at, threshold_curve


def test_vit_checkpoint_roundtrip(tiny_vit, tmp_path):
    save_encoder(tiny_vit, tmp_path, {"note": "x"})
    loaded = load_encoder(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    for a, b in zip(tiny_vit(x), loaded(x), strict=True):
        torch.testing.assert_close(a.logits, b.logits)
    card = write_model_card(
        tmp_path,
        {"title": "t", "data": "d", "command": "c", "seed": 0, "exits": tiny_vit.describe(), "curve": []},
    )
    assert "| exit | layer |" in card.read_text()


def test_text_checkpoint_stores_heads_only(tiny_text, tmp_path):
    from safetensors.torch import load_file

    save_encoder(tiny_text, tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert keys and all(k.startswith("heads.") for k in keys)
    loaded = load_encoder(tmp_path, backbone=tiny_text.backbone, tokenizer=tiny_text.tokenizer)
    torch.testing.assert_close(loaded(["a b"])[0].logits, tiny_text(["a b"])[0].logits)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointLoadError, match="config.json"):
        load_encoder(tmp_path)


def test_threshold_curve_counts_heads_and_layers():
    # 2 exits, 4 samples: sample 0,1 confident at exit 0
    logits = np.zeros((2, 4, 3), dtype=np.float32)
    logits[0, :2, 0] = 10.0
    logits[1, :, 1] = 10.0
    labels = np.array([0, 1, 1, 1])
    assert per_exit_accuracy(logits, labels) == [0.25, 0.75]
    curve = threshold_curve(logits, labels, [2, 4], [30, 110], 100, thresholds=[0.9, 1.01])
    assert curve[0]["accuracy"] == 1.0 - 0.25  # sample 1 exits early and wrong
    assert curve[0]["mac_speedup"] == pytest.approx(100 / 70)
    assert curve[0]["layer_speedup"] == pytest.approx(4 / 3)
    assert curve[1]["mac_speedup"] == pytest.approx(100 / 110) and curve[1]["layer_speedup"] == 1.0
    assert best_within(curve, 0.75, 0.0)["threshold"] == 0.9
    assert speedup_at(curve, 1.2) is not None and speedup_at(curve, 5.0) is None
