"""A Hugging Face ViT run layer by layer with LGViT exit heads (used for images and spectrograms).

``ViTEarlyExitEncoder`` wraps ``transformers.ViTModel`` without changing it: ``start`` runs the
patch embedding, each ``step`` calls the model's own ``ViTLayer`` modules up to the next exit and
evaluates that exit's head. The last exit applies the backbone's final LayerNorm and a linear
classifier on the CLS token, so forcing it reproduces ``ViTModel(x).last_hidden_state``.
Exits sit at equal MAC spacing, measured with the flop counter (see ``encoders/macs.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from exitflow.encoders.base import (
    EarlyExitEncoder,
    EncoderState,
    ExitOutput,
    check_image_batch,
)
from exitflow.encoders.exit_rules import max_prob
from exitflow.encoders.heads import HeadOutput, HeadType, build_vit_heads
from exitflow.encoders.macs import count_macs, cumulative, equal_mac_exit_layers


@dataclass(frozen=True)
class ViTEncoderConfig:
    """Size of the backbone and of its exit heads.

    Attributes:
        modality: ``"image"`` or ``"audio"`` (names the encoder; no effect on compute).
        image_size: Height and width of the (square) input in pixels.
        num_channels: Input channels.
        patch_size: Patch side in pixels; the token grid is ``image_size / patch_size`` square.
        hidden_size: Token width D.
        num_layers: Transformer layers L.
        num_heads: Attention heads per layer.
        intermediate_size: MLP width inside each layer.
        num_classes: Classes of every exit.
        num_exits: Exits including the final classifier, placed at equal MAC spacing.
        head_type: ``"lgvit"`` (LPH lower half, GAH upper half) or ``"mlp"`` (ablation).
        lph_expand: Channel expansion of the LPH 1x1 convolution.
        lph_kernel_max: Depthwise kernel of the shallowest LPH (decreasing linear map).
        lph_kernel_min: Kernel the map reaches at the deepest LPH (0 = bypass).
        gah_window_min: Pooling window of the shallowest GAH (>= 2, increasing linear map).
        gah_window_max: Pooling window of the deepest GAH.
        gah_heads: Attention heads inside each GAH.
        dropout: Dropout inside the backbone during training.
    """

    modality: str = "image"
    image_size: int = 28
    num_channels: int = 1
    patch_size: int = 4
    hidden_size: int = 64
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 256
    num_classes: int = 10
    num_exits: int = 6
    head_type: HeadType = "lgvit"
    lph_expand: int = 2
    lph_kernel_max: int = 5
    lph_kernel_min: int = 0
    gah_window_min: int = 2
    gah_window_max: int = 3
    gah_heads: int = 4
    dropout: float = 0.0

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTEncoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ViTEncoderConfig keys {unknown}; allowed: {sorted(names)}")
        return cls(**data)


class ViTEarlyExitEncoder(EarlyExitEncoder):
    """Incremental ViT with exit heads after the layers in ``exit_layers``."""

    def __init__(self, config: ViTEncoderConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(
                f"image_size {config.image_size} must be a multiple of patch_size {config.patch_size}"
            )
        self.config = config
        self.modality = config.modality
        hf_config = ViTConfig(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_channels=config.num_channels,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
        )
        self.backbone = ViTModel(hf_config, add_pooling_layer=False)
        self._embed_macs, self._layer_macs = self._measure_backbone_macs()
        self.exit_layers = equal_mac_exit_layers(self._embed_macs, self._layer_macs, config.num_exits)
        self.heads, self.head_kinds = build_vit_heads(
            config.head_type,
            config.num_exits - 1,
            config.hidden_size,
            config.num_classes,
            config.grid,
            config.lph_expand,
            config.lph_kernel_max,
            config.lph_kernel_min,
            config.gah_window_min,
            config.gah_window_max,
            config.gah_heads,
        )
        self.classifier = nn.Linear(config.hidden_size, config.num_classes)
        self._head_macs: list[int] | None = None

    # -- MACs ---------------------------------------------------------------------------------
    def _measure_backbone_macs(self) -> tuple[int, list[int]]:
        cfg = self.config
        pixels = torch.zeros(1, cfg.num_channels, cfg.image_size, cfg.image_size)
        embed = count_macs(self.backbone.embeddings, pixels)
        tokens = torch.zeros(1, 1 + cfg.grid[0] * cfg.grid[1], cfg.hidden_size)
        layers = [count_macs(layer, tokens, None, modules=(self.backbone,)) for layer in self.backbone.layers]
        return embed, layers

    def head_macs(self) -> list[int]:
        """Per-sample MACs of each exit's head (the final classifier last), from the flop counter."""
        if self._head_macs is None:
            cfg = self.config
            tokens = torch.zeros(1, 1 + cfg.grid[0] * cfg.grid[1], cfg.hidden_size)
            was_training = self.training
            self.eval()
            try:
                macs = [count_macs(head, tokens) for head in self.heads]
                macs.append(count_macs(self._final_head, tokens))
            finally:
                self.train(was_training)
            self._head_macs = macs
        return list(self._head_macs)

    def segment_macs(self) -> list[int]:
        """Backbone MACs between consecutive exits (the embedding counted in the first)."""
        bounds = (0, *self.exit_layers)
        segs = [sum(self._layer_macs[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        segs[0] += self._embed_macs
        return segs

    def exit_macs(self) -> list[int]:
        """Cumulative per-sample MACs at each exit: backbone so far plus every head evaluated."""
        return [
            s + h for s, h in zip(cumulative(self.segment_macs()), cumulative(self.head_macs()), strict=True)
        ]

    def plain_macs(self) -> int:
        """Per-sample MACs of the backbone with only its final classifier (no internal heads)."""
        return self._embed_macs + sum(self._layer_macs) + self.head_macs()[-1]

    # -- input --------------------------------------------------------------------------------
    def validate(self, x: Any) -> torch.Tensor:
        """Check ``x`` is a finite float tensor (B, C, H, W) of the configured size; (C, H, W) -> B=1."""
        cfg = self.config
        x = check_image_batch(x, self.modality, (cfg.num_channels, cfg.image_size, cfg.image_size))
        return x.to(self.backbone.embeddings.patch_embeddings.projection.weight.dtype)

    # -- incremental pass -----------------------------------------------------------------------
    def start(self, x: Any) -> EncoderState:
        pixels = self.validate(x)
        hidden = self.backbone.embeddings(pixels)  # (B, 1+N, D)
        return EncoderState(hidden=hidden)

    def _run_layers(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in self.backbone.layers[start:stop]:
            hidden = layer(hidden, None)  # (B, 1+N, D)
        return hidden

    def _final_head(self, hidden: torch.Tensor) -> HeadOutput:
        normed = self.backbone.layernorm(hidden)  # (B, 1+N, D)
        cls = normed[:, 0]  # (B, D)
        return HeadOutput(self.classifier(cls), cls, normed[:, 1:])

    def head_forward(self, exit_index: int, hidden: torch.Tensor) -> HeadOutput:
        """Evaluate exit ``exit_index``'s head on the token states after its layer."""
        if exit_index == self.num_exits - 1:
            return self._final_head(hidden)
        return self.heads[exit_index](hidden)

    def step(self, state: EncoderState) -> ExitOutput:
        if self.done(state):
            raise ValueError(f"all {self.num_exits} exits already ran; call start() for a new input")
        index = state.next_exit
        layer = self.exit_layers[index]
        state.hidden = self._run_layers(state.hidden, state.layer, layer)
        state.layer, state.next_exit = layer, index + 1
        head = self.head_forward(index, state.hidden)
        is_last = index == self.num_exits - 1
        hidden_out = self.backbone.layernorm(state.hidden) if is_last else state.hidden
        return ExitOutput(
            logits=head.logits,
            embedding=head.embedding,
            hidden=hidden_out,
            confidence=max_prob(head.logits),
            layer=layer,
            exit_index=index,
            macs=self.exit_macs()[index],
        )

    def select(self, state: EncoderState, index: torch.Tensor) -> EncoderState:
        """Keep only the samples at ``index`` (e.g. those that did not exit yet)."""
        return EncoderState(hidden=state.hidden[index], layer=state.layer, next_exit=state.next_exit)

    # -- training helpers -------------------------------------------------------------------------
    def exit_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Token states after every exit layer, (B, 1+N, D) each, for training the heads."""
        state = self.start(x)
        states = []
        for layer in self.exit_layers:
            state.hidden = self._run_layers(state.hidden, state.layer, layer)
            state.layer = layer
            states.append(state.hidden)
        return states

    def describe(self) -> list[dict[str, Any]]:
        """One row per exit: layer, head kind, head parameter count, head MACs, cumulative MACs."""
        kinds = [*self.head_kinds, "final"]
        params = [sum(p.numel() for p in h.parameters()) for h in self.heads]
        params.append(sum(p.numel() for p in self.classifier.parameters()))
        rows = []
        for i, layer in enumerate(self.exit_layers):
            row = {"exit": i, "layer": layer, "head": kinds[i], "head_params": params[i]}
            head = self.heads[i] if i < len(self.heads) else None
            if head is not None and hasattr(head, "kernel_size"):
                row["kernel_size"] = head.kernel_size
            if head is not None and hasattr(head, "window"):
                row["window"] = head.window
            row["head_macs"] = self.head_macs()[i]
            row["cumulative_macs"] = self.exit_macs()[i]
            rows.append(row)
        return rows
