"""Turning AV-MNIST splits into torch batches, and a seeded shuffling batch iterator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from exitflow.pipeline.data.avmnist import AVSplit
from exitflow.pipeline.data.imported import ImportedSplit


def modality_batch(
    split: AVSplit | ImportedSplit, modalities: Sequence[str], rows: np.ndarray
) -> dict[str, torch.Tensor | list[str]]:
    """Tensors of ``rows`` for each requested modality (``image``/``audio``; ``text`` stays a list of
    strings, or is a tensor for an imported set's character grids)."""
    out: dict[str, torch.Tensor | list[str]] = {}
    for m in modalities:
        if m == "image":
            out[m] = torch.from_numpy(np.ascontiguousarray(split.image[rows]))  # (B, 1, 28, 28)
        elif m == "audio":
            out[m] = torch.from_numpy(split.audio[rows])  # (B, 1, 112, 112)
        elif m == "text":
            if split.text is None:
                raise ValueError(f"{split.dataset} has no text modality; use avmnist-t")
            if isinstance(split.text, np.ndarray):  # an imported set's character grids (B, 1, L, L)
                out[m] = torch.from_numpy(np.ascontiguousarray(split.text[rows]))
            else:
                out[m] = [str(split.text[i]) for i in rows.tolist()]
        else:
            raise ValueError(f"unknown modality {m!r}")
    return out


def batch_rows(n: int, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> Iterator[np.ndarray]:
    """Row index batches covering ``range(n)``; shuffled deterministically per (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
