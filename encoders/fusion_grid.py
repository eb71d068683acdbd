"""Exit-grid fusion: one small late-fusion head per combination of the modalities' exits.

The CNN family fuses *while* the encoders are still running: after image exit ``i`` and audio
exit ``j`` the head ``(i, j)`` combines the two exit embeddings, so a sample whose cheap features
already agree can stop long before the deep blocks (the fused check the engine runs after each
encoder step). A modality that is absent from the sample is replaced by a learned placeholder at
its last exit, trained by modality dropout. Each head has its own temperature (fitted on
calibration data) so the exit rule reads calibrated scores.

Any number of modalities. Three give a head per triple of exits (3 x 3 x 3 = 27 for three-exit
CNNs), and a subset of them (a fused check before the third modality has run) uses the same heads
with the placeholders of the absent ones (:func:`subset_key` names those outputs). One modality has
nothing to fuse: the grid is a pass-through (no heads, 0 MACs) whose ``fuse_exits`` returns the
exit's own calibrated logits, so the engine's walk, which ends with a fusion, ends with the
encoder's last exit. (A head over the last exit's embedding was tried first and measured worse than
the exit's own head: docs/own_data.md.)

``fuse_exits(outputs)`` follows the engine's fusion protocol: ``outputs`` maps modality ->
:class:`~encoders.base.ExitOutput` (its ``exit_index`` selects the head, its ``embedding`` is the
input); the result carries ``logits`` (B, C) and per-sample ``macs`` of the head that ran.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from exitflow.encoders.base import ExitOutput
from exitflow.encoders.macs import count_macs


@dataclass
class GridFusionOutput:
    """Fused logits of one head: ``logits`` (B, C), ``macs`` (B,), and the exit of each modality."""

    logits: torch.Tensor
    macs: torch.Tensor
    exits: dict[str, int]


def grid_key(exits: Mapping[str, int], modalities: Sequence[str]) -> str:
    """The head name of an exit combination, e.g. ``image2_audio0`` (modalities in model order);
    ``fused_image2`` for a grid of one modality (``image2`` names the encoder's own exit)."""
    key = "_".join(f"{m}{int(exits[m])}" for m in modalities)
    return key if len(modalities) > 1 else f"fused_{key}"


def subset_key(exits: Mapping[str, int], modalities: Sequence[str]) -> str:
    """The output name of a fusion over the modalities in ``exits`` only (the others absent), e.g.
    ``image2_audio1`` in a grid of image, audio and text; the head name when every modality is present."""
    return grid_key(exits, [m for m in modalities if m in exits])


class ExitGridFusion(nn.Module):
    """A late-fusion MLP for every combination of the modalities' exits.

    Args:
        dims: Modality -> embedding width of each of its exits (e.g. ``{"image": [256, 512],
            "audio": [512, 512, 1024]}``), in the model's modality order.
        num_classes: Output classes C.
        hidden_dim: Hidden width of each head.
    """

    def __init__(self, dims: Mapping[str, Sequence[int]], num_classes: int, hidden_dim: int = 64):
        super().__init__()
        if len(dims) < 1 or any(len(d) == 0 for d in dims.values()):
            raise ValueError(f"grid fusion needs >= 1 modality with >= 1 exit each, got {dict(dims)}")
        self.modalities = list(dims)
        self.dims = {m: [int(d) for d in ds] for m, ds in dims.items()}
        self.num_classes, self.hidden_dim = int(num_classes), int(hidden_dim)
        self.passthrough = len(self.modalities) == 1  # one modality: the exit's own logits, no heads
        self.heads = nn.ModuleDict()
        combos = [] if self.passthrough else itertools.product(*(range(len(self.dims[m])) for m in self.modalities))
        for combo in combos:
            exits = dict(zip(self.modalities, combo, strict=True))
            width = sum(self.dims[m][e] for m, e in exits.items())
            self.heads[grid_key(exits, self.modalities)] = nn.Sequential(
                nn.Linear(width, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_classes)
            )
        # an absent modality enters as a learned vector at its last exit
        self.placeholders = nn.ParameterDict(
            {} if self.passthrough else {m: nn.Parameter(torch.zeros(ds[-1])) for m, ds in self.dims.items()})
        self.temperatures: torch.Tensor
        self.register_buffer("temperatures", torch.ones(len(self.heads)))
        self._index = {k: i for i, k in enumerate(self.heads)}
        self.head_macs = {
            k: count_macs(head, torch.zeros(1, self._in_features(k))) for k, head in self.heads.items()
        }

    def _in_features(self, key: str) -> int:
        first = cast(nn.Sequential, self.heads[key])[0]
        return int(cast(nn.Linear, first).in_features)

    @property
    def macs(self) -> int:
        """MACs of the head over every modality's last exit (what ``full`` pays for fusion; 0 for one modality)."""
        if self.passthrough:
            return 0
        return self.head_macs[grid_key({m: len(d) - 1 for m, d in self.dims.items()}, self.modalities)]

    def keys(self) -> list[str]:
        return list(self.heads)

    def fuse(
        self, embeddings: Mapping[str, torch.Tensor], exits: Mapping[str, int], calibrated: bool = True
    ) -> torch.Tensor:
        """Logits (B, C) of the head for ``exits`` over ``embeddings`` (B, D); absent modalities -> placeholder."""
        if self.passthrough:
            raise ValueError("a grid of one modality has no heads: its fusion is the exit's own logits (fuse_exits)")
        present = [m for m in self.modalities if m in embeddings]
        unknown = sorted(set(embeddings) - set(self.modalities))
        if unknown or not present:
            raise ValueError(f"grid fusion knows {self.modalities}, got embeddings for {sorted(embeddings)}")
        batch = embeddings[present[0]].shape[0]
        full_exits, parts = {}, []
        for m in self.modalities:
            if m in embeddings:
                e = int(exits[m])
                if not 0 <= e < len(self.dims[m]):
                    raise ValueError(f"{m} has exits 0..{len(self.dims[m]) - 1}, got {e}")
                if embeddings[m].shape[-1] != self.dims[m][e]:
                    raise ValueError(
                        f"{m} exit {e} embedding has width {embeddings[m].shape[-1]}, the head expects {self.dims[m][e]}"
                    )
                full_exits[m] = e
                parts.append(embeddings[m])  # (B, D_m)
            else:
                full_exits[m] = len(self.dims[m]) - 1
                parts.append(self.placeholders[m].expand(batch, -1))  # (B, D_m)
        key = grid_key(full_exits, self.modalities)
        logits = self.heads[key](torch.cat(parts, dim=-1))  # (B, C)
        return logits / self.temperatures[self._index[key]] if calibrated else logits

    def forward(self, embeddings: Mapping[str, torch.Tensor], present: Sequence[str]) -> torch.Tensor:
        """Late-fusion protocol: calibrated logits (B, C) over the *last* exits of ``present``."""
        return self.fuse({m: embeddings[m] for m in present}, {m: len(self.dims[m]) - 1 for m in present})

    def fuse_exits(self, outputs: Mapping[str, ExitOutput]) -> GridFusionOutput:
        """The engine's protocol: the head selected by each output's ``exit_index``."""
        exits = {m: o.exit_index for m, o in outputs.items()}
        if self.passthrough:
            if list(outputs) != self.modalities:
                raise ValueError(f"grid fusion knows {self.modalities}, got outputs for {sorted(outputs)}")
            logits = outputs[self.modalities[0]].logits  # (B, C), calibrated by the encoder's temperature
            return GridFusionOutput(logits=logits, macs=torch.zeros(logits.shape[0], dtype=torch.long), exits=exits)
        logits = self.fuse({m: o.embedding for m, o in outputs.items()}, exits)
        full = {m: exits.get(m, len(self.dims[m]) - 1) for m in self.modalities}
        macs = self.head_macs[grid_key(full, self.modalities)]
        return GridFusionOutput(logits=logits, macs=torch.full((logits.shape[0],), macs), exits=exits)

    def set_temperatures(self, temperatures: Mapping[str, float]) -> None:
        """Store a positive temperature per head (``keys()`` names them)."""
        missing = sorted(set(self.heads) - set(temperatures))
        bad = {k: v for k, v in temperatures.items() if not float(v) > 0}
        if missing or bad:
            raise ValueError(f"need a positive temperature for every head: missing {missing[:3]}, bad {bad}")
        self.temperatures.copy_(torch.tensor([float(temperatures[k]) for k in self.heads]))
