"""Vision encoder presets: a small ViT for AV-MNIST images (1x28x28, patch 4 -> 7x7 tokens)."""

from __future__ import annotations

import dataclasses
from typing import Any

from exitflow.encoders.vit import ViTEarlyExitEncoder, ViTEncoderConfig

AVMNIST_VISION = ViTEncoderConfig(
    modality="vision",
    image_size=28,
    num_channels=1,
    patch_size=4,
    hidden_size=64,
    num_layers=6,
    num_heads=4,
    intermediate_size=256,
    num_classes=10,
    num_exits=6,
)


def vision_config(**overrides: Any) -> ViTEncoderConfig:
    """The AV-MNIST vision preset with ``overrides`` applied (e.g. ``head_type="mlp"``)."""
    return dataclasses.replace(AVMNIST_VISION, **overrides)


def build_vision_encoder(**overrides: Any) -> ViTEarlyExitEncoder:
    return ViTEarlyExitEncoder(vision_config(**overrides))
