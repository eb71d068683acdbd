"""Fusion objectives: layer-averaged loss, cost loss, curriculum, self-distillation."""

from __future__ import annotations

import pytest
import torch

from exitflow.encoders.fusion import FusionTransformer, FusionTransformerConfig
from exitflow.encoders.fusion_training import (
    cost_loss,
    curriculum_target,
    fusion_objective,
    kl_trimmed_to_full,
    layer_averaged_loss,
)


def test_layer_averaged_loss_is_the_mean_of_per_layer_cross_entropies():
    torch.manual_seed(0)
    logits = [torch.randn(4, 3) for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 1])
    expected = sum(torch.nn.functional.cross_entropy(lg, labels) for lg in logits) / 3
    torch.testing.assert_close(layer_averaged_loss(logits, labels), expected)
    seq = [torch.randn(2, 5, 7)]
    seq_labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 0, -100]])
    assert torch.isfinite(layer_averaged_loss(seq, seq_labels))
    with pytest.raises(ValueError):
        layer_averaged_loss([], labels)


def test_kl_is_zero_for_equal_and_positive_otherwise():
    a = torch.tensor([[1.0, 2.0, 0.5]])
    assert kl_trimmed_to_full(a, a).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[0.0, 0.0, 3.0]])
    p, q = torch.softmax(a, -1), torch.softmax(b, -1)
    assert kl_trimmed_to_full(a, b).item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-5)


def test_cost_loss_and_curriculum():
    ratios = [torch.tensor([1.0, 0.5]), torch.tensor([0.25, 0.25])]
    assert cost_loss(ratios, 0.5).item() == pytest.approx(((0.75 - 0.5) ** 2 + (0.25 - 0.5) ** 2) / 2)
    assert curriculum_target(0.0, 0.4, 0.5) == 1.0
    assert curriculum_target(0.25, 0.4, 0.5) == pytest.approx(0.7)
    assert curriculum_target(0.5, 0.4, 0.5) == pytest.approx(0.4)
    assert curriculum_target(0.9, 0.4, 0.5) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        curriculum_target(0.1, 0.0, 0.5)


def test_objective_backpropagates_into_backbone_and_trimmers():
    torch.manual_seed(0)
    cfg = FusionTransformerConfig(modality_dims={"image": 8, "text": 6}, dim=16, num_layers=2, num_heads=2)
    model = FusionTransformer(cfg).train()
    tokens = {"image": torch.randn(4, 5, 8), "text": torch.randn(4, 3, 6)}
    labels = torch.tensor([0, 1, 2, 3])
    parts = fusion_objective(model(tokens), model(tokens, trim=False), labels, 0.5, 0.5)
    parts.total.backward()
    assert parts.cost > 0 and parts.self_distill > 0 and parts.task > 0
    assert model.input_proj["image"].weight.grad.abs().sum() > 0
    assert model.token_trimmers[0]["text"].local[-1].bias.grad.abs().sum() > 0
