"""Patch-stem tokens + the fusion transformer (+ the exiting command decoder) as one module.

Until trained early-exit encoders feed the fusion, it can read *patch-stem tokens*: a 4x4 patch
embedding of the 28x28 image (49 tokens), a 16x16 patch embedding of the 112x112 spectrogram
(49 tokens) and word embeddings of a command (up to 6 tokens), each with a learned position
embedding, trained jointly with the fusion. Pure computation: the caller reads the data.
"""

from __future__ import annotations

import torch
from torch import nn

from exitflow.encoders.decoder import DecoderConfig, ExitingDecoder
from exitflow.encoders.fusion import FusionTransformer, FusionTransformerConfig

STEM_MODALITIES = ("image", "audio", "text")


class PatchStems(nn.Module):
    """Token sequences from raw inputs: image and spectrogram patches, command words."""

    def __init__(self, dim: int, vocab_size: int, pad_id: int = 0, max_words: int = 6):
        super().__init__()
        self.pad_id = pad_id
        self.image = nn.Conv2d(1, dim, kernel_size=4, stride=4)  # 28x28 -> 7x7
        self.audio = nn.Conv2d(1, dim, kernel_size=16, stride=16)  # 112x112 -> 7x7
        self.words = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(49 if m != "text" else max_words, dim) * 0.02) for m in STEM_MODALITIES}
        )

    def forward(
        self, image: torch.Tensor, audio: torch.Tensor, word_ids: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """image (B, 1, 28, 28), audio (B, 1, 112, 112), word_ids (B, W) -> tokens and the text mask."""
        tokens = {
            "image": self.image(image).flatten(2).transpose(1, 2) + self.pos["image"],  # (B, 49, D)
            "audio": self.audio(audio).flatten(2).transpose(1, 2) + self.pos["audio"],  # (B, 49, D)
            "text": self.words(word_ids) + self.pos["text"],  # (B, W, D)
        }
        return tokens, {"text": (word_ids != self.pad_id).float()}  # (B, W)


class FusionSystem(nn.Module):
    """Stems + fusion transformer + (for the command task) the exiting decoder."""

    def __init__(
        self, fusion: FusionTransformerConfig, decoder: DecoderConfig | None, vocab_size: int, pad_id: int = 0
    ):
        super().__init__()
        self.stems = PatchStems(fusion.dim, vocab_size, pad_id)
        self.fusion = FusionTransformer(fusion)
        self.decoder = ExitingDecoder(decoder) if decoder is not None else None
