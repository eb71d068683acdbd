"""Audio encoder presets: an AST-style ViT over AV-MNIST spectrograms (1x112x112, patch 16 -> 7x7)."""

from __future__ import annotations

import dataclasses
from typing import Any

from exitflow.encoders.vit import ViTEarlyExitEncoder, ViTEncoderConfig

AVMNIST_AUDIO = ViTEncoderConfig(
    modality="audio",
    image_size=112,
    num_channels=1,
    patch_size=16,
    hidden_size=64,
    num_layers=6,
    num_heads=4,
    intermediate_size=256,
    num_classes=10,
    num_exits=6,
)


def audio_config(**overrides: Any) -> ViTEncoderConfig:
    """The AV-MNIST audio preset with ``overrides`` applied."""
    return dataclasses.replace(AVMNIST_AUDIO, **overrides)


def build_audio_encoder(**overrides: Any) -> ViTEarlyExitEncoder:
    return ViTEarlyExitEncoder(audio_config(**overrides))
