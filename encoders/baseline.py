"""Late-fusion baseline of MMExit/MultiBench on AV-MNIST: LeNet encoders, concatenation, MLP.

``LeNet(in_channels, width, extra_blocks)`` is a 5x5 conv + 2x2 max-pool stem followed by
``extra_blocks`` 3x3 conv + pool blocks that double the width, then a global max over the
remaining grid: the image branch (28x28, 3 extra blocks) gives 48 features, the audio
branch (112x112, 5 extra blocks) 192. ``LateFusion`` concatenates the branches it was
built with and classifies with a 2-layer MLP; with one branch it is the uni-modal baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from exitflow.encoders.base import EncoderInputError
from exitflow.encoders.macs import count_macs

BASELINE_NAMES = ("lf", "image", "audio")
INPUT_SHAPES = {"image": (1, 28, 28), "audio": (1, 112, 112)}


class LeNet(nn.Module):
    """Conv stem + ``extra_blocks`` doubling conv blocks + global max pool -> (B, width * 2**extra)."""

    def __init__(self, in_channels: int = 1, width: int = 6, extra_blocks: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
        for _ in range(extra_blocks):
            layers += [nn.Conv2d(channels, channels * 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels *= 2
        self.body = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, C, h, w)
        return h.amax(dim=(2, 3))  # (B, C)


@dataclass(frozen=True)
class BaselineConfig:
    """Architecture of a baseline; saved beside its weights."""

    name: str = "lf"
    width: int = 6
    image_blocks: int = 3
    audio_blocks: int = 5
    hidden: int = 100
    num_classes: int = 10
    dropout: float = 0.1

    def modalities(self) -> tuple[str, ...]:
        if self.name not in BASELINE_NAMES:
            raise ValueError(f"unknown baseline {self.name!r}; choose one of {', '.join(BASELINE_NAMES)}")
        return ("image", "audio") if self.name == "lf" else (self.name,)

    def to_dict(self) -> dict:
        return asdict(self)


def check_input(modality: str, x: torch.Tensor) -> None:
    """Raise EncoderInputError unless ``x`` is a finite float (B, *INPUT_SHAPES[modality]) tensor."""
    expected = INPUT_SHAPES[modality]
    if not isinstance(x, torch.Tensor):
        raise EncoderInputError(f"{modality}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise EncoderInputError(f"{modality}: expected shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise EncoderInputError(f"{modality}: expected a float tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise EncoderInputError(f"{modality}: input contains NaN or infinite values")


class LateFusion(nn.Module):
    """Per-modality LeNets -> concatenation -> MLP classifier."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        self.cfg = cfg
        blocks = {"image": cfg.image_blocks, "audio": cfg.audio_blocks}
        lenets = {m: LeNet(1, cfg.width, blocks[m]) for m in cfg.modalities()}
        self.encoders = nn.ModuleDict(lenets)
        width = sum(enc.out_features for enc in lenets.values())
        self.head = nn.Sequential(
            nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.num_classes)
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.cfg.modalities()

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``inputs`` maps each modality of this model to its (B, 1, H, W) batch; returns (B, C) logits."""
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise EncoderInputError(f"baseline {self.cfg.name!r} needs modalities {missing}")
        feats = []
        for m in self.modalities:
            check_input(m, inputs[m])
            feats.append(self.encoders[m](inputs[m]))  # (B, C_m)
        return self.head(torch.cat(feats, dim=1))  # (B, num_classes)


def measure_macs(model: LateFusion) -> int:
    """MACs of one sample through the whole baseline (flop counter)."""
    inputs = {m: torch.zeros(1, *INPUT_SHAPES[m]) for m in model.modalities}
    return count_macs(model, inputs)
