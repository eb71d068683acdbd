"""Exit rules: pure per-sample functions over tensors, one value per sample.

A rule maps an exit's output to a score per sample; the caller compares it with a threshold
(``score >= threshold`` exits for confidences and similarities, ``score <= threshold`` for
entropies). Nothing here reduces over the batch: batched inference decides per sample.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812

RuleName = Literal["max_prob", "entropy", "patience", "cosine"]
RULE_NAMES: tuple[str, ...] = ("max_prob", "entropy", "patience", "cosine")


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (B, C) with C >= 2, got {tuple(logits.shape)}")


def max_prob(logits: torch.Tensor) -> torch.Tensor:
    """Largest softmax probability per sample (LGViT's confidence), shape (B,)."""
    _check_logits(logits)
    return F.softmax(logits.float(), dim=-1).max(dim=-1).values  # (B,)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy divided by log C per sample (MMExit's measure), in [0, 1], shape (B,).

    Low values mean a confident exit; exit when ``normalized_entropy(logits) <= threshold``.
    """
    _check_logits(logits)
    log_p = F.log_softmax(logits.float(), dim=-1)  # (B, C)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)  # (B,)
    return entropy / math.log(logits.shape[1])


def cosine_to_previous(hidden: torch.Tensor, hidden_prev: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sample's state to its state at the previous exit (MuE), shape (B,).

    Args:
        hidden: (B, D) pooled features or (B, N, D) token states at this exit.
        hidden_prev: The same shape, at the previous exit.
    """
    if hidden.shape != hidden_prev.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and hidden_prev {tuple(hidden_prev.shape)} differ")
    flat = hidden.float().reshape(hidden.shape[0], -1)  # (B, N*D)
    flat_prev = hidden_prev.float().reshape(hidden.shape[0], -1)  # (B, N*D)
    return F.cosine_similarity(flat, flat_prev, dim=-1)  # (B,)


class PatienceCounter:
    """PABEE's patience: counts, per sample, how many consecutive exits agreed on the class.

    ``update(logits)`` returns the count after this exit, shape (B,): 0 at the first exit,
    +1 each time the prediction repeats, back to 0 when it changes. Exit when the count
    reaches the patience. ``select(index)`` keeps only the samples still running.
    """

    def __init__(self) -> None:
        self.prediction: torch.Tensor | None = None  # (B,)
        self.count: torch.Tensor | None = None  # (B,)

    def update(self, logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits)
        prediction = logits.argmax(dim=-1)  # (B,)
        if self.prediction is None or self.count is None:
            self.count = torch.zeros_like(prediction)
        else:
            if self.prediction.shape != prediction.shape:
                raise ValueError(
                    f"PatienceCounter holds {self.prediction.shape[0]} samples but got {prediction.shape[0]}; "
                    "call select(index) after dropping exited samples"
                )
            self.count = torch.where(
                prediction == self.prediction, self.count + 1, torch.zeros_like(self.count)
            )
        self.prediction = prediction
        return self.count.clone()

    def select(self, index: torch.Tensor) -> None:
        if self.prediction is not None and self.count is not None:
            self.prediction = self.prediction[index]
            self.count = self.count[index]


def rule_score(rule: str, logits: torch.Tensor) -> torch.Tensor:
    """Score of a stateless logit rule, oriented so that larger means "exit now", shape (B,)."""
    if rule == "max_prob":
        return max_prob(logits)
    if rule == "entropy":
        return 1.0 - normalized_entropy(logits)
    raise ValueError(
        f"rule_score supports 'max_prob' and 'entropy', got {rule!r} (patience/cosine keep state)"
    )
