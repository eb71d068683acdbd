"""Masked late fusion: the concatenation fusion exit over whichever modalities ran."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from exitflow.encoders.macs import count_macs


class MaskedLateFusion(nn.Module):
    """Late fusion over whichever modalities ran: absent ones get a learned placeholder.

    Args:
        dims: Modality -> embedding width D_m, in a fixed order.
        num_classes: Output classes C.
        hidden_dim: Width of the hidden layer (0 = a single linear layer).
    """

    def __init__(self, dims: Mapping[str, int], num_classes: int, hidden_dim: int = 0):
        super().__init__()
        self.modalities = list(dims)
        self.dims, self.hidden_dim, self.num_classes = dict(dims), int(hidden_dim), int(num_classes)
        self.placeholders = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m, d in dims.items()})
        width = sum(dims.values())
        self.head: nn.Module = (
            nn.Linear(width, num_classes)
            if hidden_dim == 0
            else nn.Sequential(nn.Linear(width, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_classes))
        )
        self.macs = count_macs(self, {m: torch.zeros(1, d) for m, d in dims.items()}, list(dims))

    def forward(self, embeddings: dict[str, torch.Tensor], present: list[str]) -> torch.Tensor:
        unknown = [m for m in present if m not in self.placeholders]
        if unknown:
            raise ValueError(f"fusion knows {self.modalities}, got present modalities {unknown}")
        ref = next((embeddings[m] for m in present if m in embeddings), None)
        batch = 1 if ref is None else ref.shape[0]
        parts = []
        for m in self.modalities:
            if m in present and m in embeddings:
                parts.append(embeddings[m])  # (B, D_m)
            else:
                parts.append(self.placeholders[m].expand(batch, -1))  # (B, D_m)
        return self.head(torch.cat(parts, dim=-1))  # (B, C)

    fuse = forward

