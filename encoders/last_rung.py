"""The last rung of the cascade: hard samples meet a model at least as strong as the best single pass.

The CNN family's early exits are cheap but, on a voice nobody trained on, its full path is not always the
most accurate system a user could run: the LeNet late-fusion baseline (``lf``) wins on some voices, the CNN
on others (docs/adaptive.md, five-voice protocol). The last rung puts both behind the exits. A sample that
no check of the walk answered (the CNN's final fusion included) also runs ``lf``, and the answer is the
log-linear mix of the two models' class probabilities,

    log p(y) = w * log p_cnn(y) + (1 - w) * log p_lf(y)   (renormalised),

with ``w`` chosen on the calibration voice (:func:`fit_mix_weight`, least negative log-likelihood). ``full``
then means that strongest path: the CNN's last exits fused, plus ``lf``, mixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

RUNG_KEY = "rung"  # the walk's last check: the mixed answer of the CNN's full path and the rung model
MIX_GRID = tuple(round(w, 2) for w in np.arange(0.0, 1.0001, 0.05))  # w = 0: lf alone, 1: the CNN alone


class RungError(ValueError):
    """Logits the mix cannot combine (shapes, non-finite values) or a weight outside [0, 1]."""


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _check(cnn_logits: np.ndarray, rung_logits: np.ndarray, weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise RungError(f"the mix weight must lie in [0, 1], got {weight}")
    if cnn_logits.shape != rung_logits.shape:
        raise RungError(f"the CNN's logits {cnn_logits.shape} and the rung's {rung_logits.shape} differ in shape")
    if not (np.isfinite(cnn_logits).all() and np.isfinite(rung_logits).all()):
        raise RungError("non-finite logits reached the last rung's mix")


def mix_logits(cnn_logits: np.ndarray, rung_logits: np.ndarray, weight: float) -> np.ndarray:
    """The mixed answer's log-probabilities (N, C) from both models' logits (N, C)."""
    cnn_logits, rung_logits = np.asarray(cnn_logits, np.float64), np.asarray(rung_logits, np.float64)
    _check(cnn_logits, rung_logits, weight)
    return _log_softmax(weight * _log_softmax(cnn_logits) + (1.0 - weight) * _log_softmax(rung_logits))


def fit_mix_weight(
    cnn_logits: np.ndarray, rung_logits: np.ndarray, labels: np.ndarray, grid: Sequence[float] = MIX_GRID,
) -> float:
    """The weight of the grid whose mix has the least negative log-likelihood on ``labels`` (calibration
    data only); a tie goes to the weight nearest 0.5 (both models)."""
    if not grid:
        raise RungError("fitting the mix needs at least one candidate weight")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape[0] != np.asarray(cnn_logits).shape[0] or labels.shape[0] == 0:
        raise RungError(f"fitting the mix needs one label per row; got {labels.shape[0]} labels for "
                        f"{np.asarray(cnn_logits).shape[0]} rows")
    rows = np.arange(labels.shape[0])
    scored = [(round(float(-mix_logits(cnn_logits, rung_logits, w)[rows, labels].mean()), 9), abs(w - 0.5), w)
              for w in grid]
    return float(min(scored)[2])


class MixHead(nn.Module):
    """The mix as a graph node: (B, C) CNN logits and (B, C) rung logits -> (B, C) mixed log-probabilities."""

    def __init__(self, weight: float):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise RungError(f"the mix weight must lie in [0, 1], got {weight}")
        self.weight = float(weight)

    def forward(self, cnn_logits: torch.Tensor, rung_logits: torch.Tensor) -> torch.Tensor:
        mixed = self.weight * torch.log_softmax(cnn_logits, dim=-1) + (1.0 - self.weight) * torch.log_softmax(
            rung_logits, dim=-1)
        return torch.log_softmax(mixed, dim=-1)
