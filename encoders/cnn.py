"""Convolutional encoders with an exit after every block (MMExit's LeNet setting, made cheap early).

``CNNEarlyExitEncoder`` keeps the incremental contract of ``encoders/base.py``: ``start`` runs
the stem, each ``step`` runs one block and its exit head. The design follows what a probe of
plain LeNet exits measured (``../shared/notes/cnn-exits-probe.md``): exits on full-resolution,
low-level audio features are useless and MACs spread evenly over blocks. So the stem is a
strided "patchify" convolution (kernel = stride, e.g. 4: a 112x112 spectrogram becomes a 28x28
map), the first blocks stride 2 again (coarse, MSDNet-like features that already carry the
class) and the width grows as the map shrinks; the deepest block works on the coarsest map.

Each exit head: adaptive average pool to ``head_pool`` x ``head_pool`` -> flatten (the
embedding, which fusion consumes) -> linear classifier. Per-exit temperatures (a buffer, 1.0
until :meth:`set_temperatures` stores values fitted on calibration data, see
``encoders/calibration.py``) divide the logits, so every exit rule reads calibrated scores;
the argmax is unchanged. MACs come from the flop counter (``encoders/macs.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from exitflow.encoders.base import (
    EarlyExitEncoder,
    EncoderState,
    ExitOutput,
    check_image_batch,
)
from exitflow.encoders.exit_rules import max_prob
from exitflow.encoders.macs import count_macs, cumulative


@dataclass(frozen=True)
class CNNEncoderConfig:
    """Shape of a CNN encoder with exits.

    Attributes:
        modality: ``"image"`` or ``"audio"`` (names the encoder; no effect on compute).
        input_size: Height and width of the square input in pixels.
        num_channels: Input channels.
        stem_channels: Output channels of the stem.
        stem_stride: Stem kernel and stride (patchify): the map side becomes ``input_size / stem_stride``.
        block_channels: Output channels of each block (3x3 conv + BatchNorm + ReLU); one exit per block.
        block_strides: Stride of each block's convolution (1 or 2).
        head_pool: Side of the pooled grid each exit head flattens (embedding = C * head_pool**2).
        num_classes: Classes of every exit.
        dropout: Dropout before each exit's classifier during training.
    """

    modality: str = "audio"
    input_size: int = 112
    num_channels: int = 1
    stem_channels: int = 16
    stem_stride: int = 4
    block_channels: tuple[int, ...] = (32, 64, 128)
    block_strides: tuple[int, ...] = (2, 2, 1)
    head_pool: int = 4
    num_classes: int = 10
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.block_channels) != len(self.block_strides) or not self.block_channels:
            raise ValueError(
                f"block_channels {self.block_channels} and block_strides {self.block_strides} must be "
                f"non-empty and of equal length (one exit per block)"
            )
        if self.input_size % self.stem_stride:
            raise ValueError(f"input_size {self.input_size} must be a multiple of stem_stride {self.stem_stride}")
        if any(s not in (1, 2) for s in self.block_strides):
            raise ValueError(f"block_strides must be 1 or 2, got {self.block_strides}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CNNEncoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown CNNEncoderConfig keys {unknown}; allowed: {sorted(names)}")
        data = {k: tuple(v) if k in ("block_channels", "block_strides") else v for k, v in data.items()}
        return cls(**data)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    padding = kernel // 2 if kernel % 2 else 0
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ExitHead(nn.Module):
    """Average pool to ``pool`` x ``pool``, flatten (the embedding), linear classifier."""

    def __init__(self, channels: int, pool: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels * pool * pool, num_classes)
        self.embed_dim = channels * pool * pool

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.pool(features).flatten(1)  # (B, C * p * p)
        return self.classifier(self.dropout(embedding)), embedding  # (B, K), (B, C * p * p)


class CNNEarlyExitEncoder(EarlyExitEncoder):
    """Stem + blocks with an exit head after every block, run one block per ``step``."""

    def __init__(self, config: CNNEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.modality = config.modality
        self.stem = _conv_bn_relu(config.num_channels, config.stem_channels, config.stem_stride, config.stem_stride)
        widths = (config.stem_channels, *config.block_channels)
        self.blocks = nn.ModuleList(
            _conv_bn_relu(c_in, c_out, 3, s)
            for c_in, c_out, s in zip(widths[:-1], widths[1:], config.block_strides, strict=True)
        )
        self.heads = nn.ModuleList(
            ExitHead(c, config.head_pool, config.num_classes, config.dropout) for c in config.block_channels
        )
        self.exit_layers = tuple(range(1, len(self.blocks) + 1))
        self.temperatures: torch.Tensor
        self.register_buffer("temperatures", torch.ones(len(self.blocks)))
        self._segment_macs: list[int] | None = None
        self._head_macs: list[int] | None = None

    @property
    def embed_dims(self) -> list[int]:
        return [cast(ExitHead, head).embed_dim for head in self.heads]

    # -- MACs ---------------------------------------------------------------------------------
    def _measure_macs(self) -> None:
        cfg = self.config
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(1, cfg.num_channels, cfg.input_size, cfg.input_size)
            segs, heads = [], []
            stem_macs = count_macs(self.stem, x)
            h = self.stem(x)
            for block, head in zip(self.blocks, self.heads, strict=True):
                segs.append(count_macs(block, h))
                h = block(h)
                heads.append(count_macs(head, h))
            segs[0] += stem_macs
        finally:
            self.train(was_training)
        self._segment_macs, self._head_macs = segs, heads

    def segment_macs(self) -> list[int]:
        """Backbone MACs between consecutive exits (the stem counted in the first)."""
        if self._segment_macs is None:
            self._measure_macs()
        return list(self._segment_macs or [])

    def head_macs(self) -> list[int]:
        """Per-sample MACs of each exit head."""
        if self._head_macs is None:
            self._measure_macs()
        return list(self._head_macs or [])

    def exit_macs(self) -> list[int]:
        """Cumulative per-sample MACs at each exit: blocks so far plus every head evaluated."""
        segs, heads = cumulative(self.segment_macs()), cumulative(self.head_macs())
        return [s + h for s, h in zip(segs, heads, strict=True)]

    def plain_macs(self) -> int:
        """Per-sample MACs of all blocks with only the last exit's head."""
        return sum(self.segment_macs()) + self.head_macs()[-1]

    # -- input --------------------------------------------------------------------------------
    def validate(self, x: Any) -> torch.Tensor:
        """Check ``x`` is a finite tensor (B, C, H, W) of the configured size; (C, H, W) -> B=1."""
        cfg = self.config
        x = check_image_batch(x, self.modality, (cfg.num_channels, cfg.input_size, cfg.input_size))
        return x.to(self.stem[0].weight.dtype)

    # -- incremental pass -----------------------------------------------------------------------
    def start(self, x: Any) -> EncoderState:
        return EncoderState(hidden=self.stem(self.validate(x)))  # (B, C0, H/s, W/s)

    def step(self, state: EncoderState) -> ExitOutput:
        if self.done(state):
            raise ValueError(f"all {self.num_exits} exits already ran; call start() for a new input")
        index = state.next_exit
        if index < state.layer:
            raise ValueError(f"exit {index} is behind the blocks already run ({state.layer}); call start() again")
        for block in self.blocks[state.layer : index + 1]:  # blocks of exits left out run, their heads do not
            state.hidden = block(state.hidden)  # (B, C_i, H_i, W_i)
        state.layer, state.next_exit = index + 1, index + 1
        logits, embedding = self.heads[index](state.hidden)
        logits = logits / self.temperatures[index]  # calibrated scores (argmax unchanged)
        return ExitOutput(
            logits=logits,
            embedding=embedding,
            hidden=state.hidden.flatten(2).transpose(1, 2),  # (B, H_i * W_i, C_i) tokens
            confidence=max_prob(logits),
            layer=index + 1,
            exit_index=index,
            macs=self.exit_macs()[index],
        )

    def select(self, state: EncoderState, index: torch.Tensor) -> EncoderState:
        """Keep only the samples at ``index`` (e.g. those that did not exit yet)."""
        return EncoderState(hidden=state.hidden[index], layer=state.layer, next_exit=state.next_exit)

    def fold_batchnorm(self) -> None:
        """Fold every BatchNorm into the convolution before it, for inference at batch 1 (each BatchNorm
        call costs as much as a small convolution there). Outputs stay equal up to float rounding; the
        folded module no longer matches a saved state dict, so fold after loading, never before saving."""
        if self.training:
            raise ValueError("fold_batchnorm() is for inference: call eval() first")
        for seq in (self.stem, *self.blocks):
            conv, norm = seq[0], seq[1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                seq[0], seq[1] = fuse_conv_bn_eval(conv, norm), nn.Identity()

    def set_temperatures(self, temperatures: list[float] | torch.Tensor) -> None:
        """Store per-exit temperatures (> 0), e.g. from ``encoders.calibration.fit_temperature``."""
        t = torch.as_tensor(temperatures, dtype=self.temperatures.dtype)
        if t.shape != self.temperatures.shape or not bool((t > 0).all()):
            raise ValueError(f"need {self.num_exits} positive temperatures, got {t.tolist()}")
        self.temperatures.copy_(t)

    def describe(self) -> list[dict[str, Any]]:
        """One row per exit: block, channels, map side, head MACs, cumulative MACs, temperature."""
        side = self.config.input_size // self.config.stem_stride
        rows = []
        for i, (c, s) in enumerate(zip(self.config.block_channels, self.config.block_strides, strict=True)):
            side = (side + 1) // 2 if s == 2 else side
            rows.append({
                "exit": i, "channels": c, "map_side": side, "head_macs": self.head_macs()[i],
                "cumulative_macs": self.exit_macs()[i], "temperature": float(self.temperatures[i]),
            })
        return rows


def cnn_preset(modality: str, **overrides: Any) -> CNNEncoderConfig:
    """The default CNN encoder of a modality (``image``: 28x28, ``audio``: 112x112 spectrogram)."""
    presets = {
        "image": CNNEncoderConfig(
            modality="image", input_size=28, stem_channels=16, stem_stride=2,
            block_channels=(16, 32, 64), block_strides=(2, 1, 2),
        ),
        "audio": CNNEncoderConfig(modality="audio"),
    }
    if modality not in presets:
        raise ValueError(f"no CNN preset for modality {modality!r}; choose one of {sorted(presets)}")
    return dataclasses.replace(presets[modality], **overrides)
