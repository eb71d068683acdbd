"""ViT encoder presets for AV-MNIST: the image ViT (1x28x28, patch 4) and the AST-style audio ViT
over spectrograms (1x112x112, patch 16); both give 7x7 tokens, 64 wide, 6 layers, 6 exits."""

from __future__ import annotations

import dataclasses
from typing import Any

from exitflow.encoders.vit import ViTEarlyExitEncoder, ViTEncoderConfig

_SHARED = ViTEncoderConfig(
    num_channels=1, hidden_size=64, num_layers=6, num_heads=4, intermediate_size=256, num_classes=10, num_exits=6
)
PRESETS = {
    "image": dataclasses.replace(_SHARED, modality="image", image_size=28, patch_size=4),
    "audio": dataclasses.replace(_SHARED, modality="audio", image_size=112, patch_size=16),
}


def vit_config(modality: str, **overrides: Any) -> ViTEncoderConfig:
    """The AV-MNIST preset of ``modality`` (``image`` or ``audio``) with ``overrides`` applied."""
    if modality not in PRESETS:
        raise ValueError(f"no ViT preset for modality {modality!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[modality], **overrides)


def build_vit_encoder(modality: str, **overrides: Any) -> ViTEarlyExitEncoder:
    return ViTEarlyExitEncoder(vit_config(modality, **overrides))
