"""Exit rules over numpy probabilities: one score per sample and the test against a threshold.

The engine hands the policy softmax probabilities of each exit (a ``(C,)`` vector for one
sample, or ``(N, C)`` / ``(N, E, C)`` arrays when profiling); these functions turn them into the
score each rule compares with its threshold:

- ``entropy``: normalized entropy H / log C in [0, 1] (MMExit eq. 2); exits when ``score <= t``.
- ``max_prob``: largest probability (LGViT); exits when ``score >= t``.
- ``patience``: how many consecutive earlier exits agreed with this exit's class (PABEE; 0 at
  the first exit); exits when ``score >= t``.
- ``none``: never exits early (every modality runs to its last exit, then fusion).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

ExitRule = Literal["entropy", "max_prob", "patience", "none"]
EXIT_RULES: tuple[str, ...] = ("entropy", "max_prob", "patience", "none")


def check_rule(rule: str) -> None:
    """Raise ValueError unless ``rule`` is one of :data:`EXIT_RULES`."""
    if rule not in EXIT_RULES:
        raise ValueError(f"exit rule must be one of {EXIT_RULES}, got {rule!r}")


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of ``probs`` over the last axis divided by log C; shape ``probs.shape[:-1]``."""
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[-1]
    if num_classes < 2:
        raise ValueError(f"probabilities need at least 2 classes on the last axis, got shape {probs.shape}")
    safe = np.clip(probs, 1e-12, 1.0)
    return -(probs * np.log(safe)).sum(axis=-1) / math.log(num_classes)


def entropy_of(probs: Sequence[float]) -> float:
    """Normalized entropy of one probability vector (C >= 2 values), in plain Python.

    The same value as :func:`normalized_entropy` for a 1-D input (zeros contribute nothing), at
    a fraction of its cost for small C: the policy calls it once per evaluated exit.
    """
    num_classes = len(probs)
    if num_classes < 2:
        raise ValueError(f"probabilities need at least 2 classes, got {num_classes}")
    h = 0.0
    for p in probs:
        if p > 1e-12:
            h -= p * math.log(p)
    return h / math.log(num_classes)


def max_prob(probs: np.ndarray) -> np.ndarray:
    """Largest probability over the last axis; shape ``probs.shape[:-1]``."""
    return np.asarray(probs, dtype=np.float64).max(axis=-1)


def patience_counts(predictions: np.ndarray) -> np.ndarray:
    """Per-exit patience counts from class predictions of shape (N, E): 0 at exit 0, +1 per repeat."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2:
        raise ValueError(f"predictions must have shape (N, E), got {predictions.shape}")
    counts = np.zeros(predictions.shape, dtype=np.int64)  # (N, E)
    for j in range(1, predictions.shape[1]):
        same = predictions[:, j] == predictions[:, j - 1]  # (N,)
        counts[:, j] = np.where(same, counts[:, j - 1] + 1, 0)
    return counts


def scores_from_probs(rule: str, probs: np.ndarray) -> np.ndarray:
    """Scores of ``rule`` for probabilities of shape (N, E, C); returns (N, E).

    ``patience`` derives its counts from the argmax classes; ``none`` returns zeros.
    """
    check_rule(rule)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape (N, E, C), got {probs.shape}")
    if rule == "entropy":
        return normalized_entropy(probs)
    if rule == "max_prob":
        return max_prob(probs)
    if rule == "patience":
        return patience_counts(probs.argmax(axis=-1)).astype(np.float64)
    return np.zeros(probs.shape[:2])


def passes(rule: str, score: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """Whether ``score`` passes ``threshold`` under ``rule`` (scalar or elementwise)."""
    if rule == "entropy":
        return score <= threshold
    if rule in ("max_prob", "patience"):
        return score >= threshold
    if rule == "none":
        return np.zeros(np.shape(score), dtype=bool) if np.ndim(score) else False
    raise ValueError(f"exit rule must be one of {EXIT_RULES}, got {rule!r}")


def couple_threshold(rule: str, threshold: float, lam: float, lam_ref: float, coupling: float) -> float:
    """Shift a threshold with lambda so a smaller lambda (cheaper) exits earlier.

    With ``coupling`` kappa and ratio ``r = (lam_ref / lam) ** kappa``: an entropy threshold
    becomes ``min(1, t * r)``, a max-prob threshold ``1 - (1 - t) * r`` (floored at 0); patience
    and ``none`` stay as they are. ``coupling = 0`` leaves every threshold untouched.
    """
    if coupling == 0.0 or rule in ("patience", "none"):
        return threshold
    ratio = (lam_ref / lam) ** coupling
    if rule == "entropy":
        return float(min(1.0, threshold * ratio))
    return float(max(0.0, 1.0 - (1.0 - threshold) * ratio))
