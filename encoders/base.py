"""The incremental early-exit encoder contract shared by every modality.

An encoder runs *incrementally*: ``start(x)`` embeds the input and returns a state,
each ``step(state)`` runs the backbone layers up to the next exit point, evaluates that
exit's head and returns an :class:`ExitOutput`. A caller that stops calling ``step``
really stops compute: later layers never run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class EncoderInputError(ValueError):
    """An encoder was given input of the wrong shape, dtype or content (e.g. NaN)."""


@dataclass
class ExitOutput:
    """What one exit point produced for a batch.

    Attributes:
        logits: Class scores of this exit's head, shape (B, C).
        embedding: Pooled feature the head classified, shape (B, D).
        hidden: Backbone token states after ``layer``, shape (B, N, D) (CLS first where the
            backbone has one). Fusion consumes these.
        confidence: Max-softmax probability per sample, shape (B,).
        layer: 1-based index of the last backbone layer that ran.
        exit_index: 0-based index of this exit among the encoder's exits.
        macs: Cumulative multiply-accumulates per sample up to and including this exit
            (embedding + layers 1..layer + this head), measured with the flop counter.
        attention_mask: (B, N) mask of valid tokens (1 = keep) when the backbone pads, else None.
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    hidden: torch.Tensor
    confidence: torch.Tensor
    layer: int
    exit_index: int
    macs: int
    attention_mask: torch.Tensor | None = None


@dataclass
class EncoderState:
    """Mutable state of one incremental pass: the token states and where the pass stands."""

    hidden: torch.Tensor  # (B, N, D)
    layer: int = 0  # number of backbone layers run so far
    next_exit: int = 0  # index of the next exit to evaluate
    extras: dict[str, Any] = field(default_factory=dict)


class EarlyExitEncoder(nn.Module, ABC):
    """Base class of every early-exit encoder (image, audio, text).

    Subclasses define ``exit_layers`` (1-based backbone layer after which each exit sits,
    strictly increasing, the last one equal to the backbone depth), ``start`` and ``step``.
    ``forward`` runs all exits and returns their outputs, which training uses.
    """

    modality: str = ""
    exit_layers: tuple[int, ...] = ()

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    @abstractmethod
    def start(self, x: Any) -> EncoderState:
        """Validate and embed ``x``; no transformer layer runs yet."""

    @abstractmethod
    def step(self, state: EncoderState) -> ExitOutput:
        """Run layers up to the next exit, evaluate its head, advance ``state``."""

    def done(self, state: EncoderState) -> bool:
        return state.next_exit >= self.num_exits

    def select(self, state: EncoderState, index: torch.Tensor) -> EncoderState:
        """Keep only the samples at ``index`` (B',) of ``state``: those still in flight."""
        raise NotImplementedError(f"{type(self).__name__} cannot drop samples from a batch")

    def forward(self, x: Any) -> list[ExitOutput]:
        state = self.start(x)
        outputs = []
        while not self.done(state):
            outputs.append(self.step(state))
        return outputs

    def exit_macs(self) -> list[int]:
        """Cumulative per-sample MACs at each exit (heads counted), from the flop counter."""
        raise NotImplementedError(f"{type(self).__name__} does not report MACs")

    def head_macs(self) -> list[int]:
        """Per-sample MACs of each exit's head alone (the final classifier last)."""
        raise NotImplementedError(f"{type(self).__name__} does not report its heads' MACs")


def check_image_batch(x: Any, modality: str, want: tuple[int, int, int]) -> torch.Tensor:
    """``x`` as a finite float (B, C, H, W) batch of ``want = (C, H, W)`` (a single (C, H, W) becomes B=1).

    Raises:
        EncoderInputError: not a tensor, the wrong shape, an empty batch, or NaN/inf values.
    """
    if not isinstance(x, torch.Tensor):
        raise EncoderInputError(f"{modality} input must be a torch.Tensor (B, *{want}), got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or tuple(x.shape[1:]) != want:
        raise EncoderInputError(
            f"{modality} input must have shape (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}; "
            f"resize/convert it to {want[0]} channel(s) of {want[1]}x{want[2]} first"
        )
    if x.shape[0] == 0:
        raise EncoderInputError(f"{modality} input is an empty batch (B=0)")
    if not torch.is_floating_point(x):
        x = x.float()
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise EncoderInputError(f"{modality} input has NaN/inf values in samples {bad[:10]}")
    return x

