"""Temperature scaling of exit logits, fitted on calibration data (Guo et al., 2017).

One scalar T per exit minimises the negative log-likelihood of ``softmax(logits / T)`` on held-out
samples; argmax is unchanged, only the confidence an exit rule reads moves. Fit on the
calibration split (speakers the encoders never trained on), never on training or test data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The T > 0 that minimises NLL of ``logits / T`` against ``labels``.

    Args:
        logits: (N, C) uncalibrated exit logits.
        labels: (N,) class indices.
        steps: Optimiser iterations (LBFGS over log T).

    Returns:
        T, clamped to [0.05, 20].

    Raises:
        ValueError: shapes that do not match or an empty set.
    """
    if logits.dim() != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(f"need logits (N, C) and labels (N,) with N > 0, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits, labels = logits.detach().float(), labels.detach().long()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of max-softmax confidence over equal-width bins (lower is better calibrated)."""
    probs = F.softmax(logits.float(), dim=-1)
    conf, pred = probs.max(dim=-1)  # (N,), (N,)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.float().mean() * (conf[mask].mean() - correct[mask].mean()).abs()
    return float(ece)
