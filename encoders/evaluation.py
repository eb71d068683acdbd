"""Offline evaluation from per-exit logits: per-exit accuracy and accuracy / speed-up curves.

Collect every exit's logits once (``collect_exit_logits``), then sweep thresholds without
re-running the model: for a threshold, each sample takes the first exit whose score passes
it (the last exit otherwise), exactly as :func:`encoders.early_exit_runner.run_early_exit`
decides for the stateless rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.exit_rules import rule_score

DEFAULT_THRESHOLDS: tuple[float, ...] = (
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.925,
    0.95,
    0.97,
    0.98,
    0.99,
    0.995,
    0.999,
    1.01,
)


@torch.no_grad()
def collect_exit_logits(
    encoder: EarlyExitEncoder, batches: Iterable[Any], progress: Any = None
) -> np.ndarray:
    """Logits of every exit for every sample, shape (E, N, C), running all exits per batch."""
    encoder.eval()
    chunks: list[np.ndarray] = []
    for x in batches:
        outs = encoder(x)
        chunks.append(np.stack([o.logits.float().cpu().numpy() for o in outs]))  # (E, B, C)
        if progress is not None:
            progress.update(len(x))
    return np.concatenate(chunks, axis=1)


def per_exit_accuracy(exit_logits: np.ndarray, labels: np.ndarray) -> list[float]:
    """Top-1 accuracy of each exit on its own, (E,) list."""
    return [float((exit_logits[e].argmax(-1) == labels).mean()) for e in range(exit_logits.shape[0])]


def exit_scores(exit_logits: np.ndarray, rule: str = "max_prob") -> np.ndarray:
    """Per-exit, per-sample scores (larger = more ready to exit), shape (E, N)."""
    return np.stack(
        [rule_score(rule, torch.from_numpy(exit_logits[e])).numpy() for e in range(exit_logits.shape[0])]
    )


def exits_at(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Index of the first exit whose score is >= threshold (the last exit if none), shape (N,)."""
    passed = scores >= threshold  # (E, N)
    passed[-1] = True
    return passed.argmax(axis=0)


def threshold_curve(
    exit_logits: np.ndarray,
    labels: np.ndarray,
    exit_layers: Sequence[int],
    exit_macs: Sequence[int],
    plain_macs: int,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    rule: str = "max_prob",
) -> list[dict[str, float]]:
    """Accuracy and speed-ups over thresholds.

    ``mac_speedup`` = plain backbone MACs (final classifier only) / mean MACs actually spent,
    where a sample exiting at exit j pays the backbone up to j plus every head 0..j.
    ``layer_speedup`` = L / mean exit layer (LGViT's measure).
    """
    scores = exit_scores(exit_logits, rule)
    layers = np.asarray(exit_layers, dtype=np.float64)
    macs = np.asarray(exit_macs, dtype=np.float64)
    depth = float(layers[-1])
    rows = []
    for threshold in thresholds:
        chosen = exits_at(scores, threshold)
        pred = exit_logits[chosen, np.arange(labels.shape[0])].argmax(-1)
        rows.append(
            {
                "threshold": float(threshold),
                "accuracy": float((pred == labels).mean()),
                "mac_speedup": float(plain_macs / macs[chosen].mean()),
                "layer_speedup": float(depth / layers[chosen].mean()),
                "mean_exit_layer": float(layers[chosen].mean()),
            }
        )
    return rows


def best_within(
    curve: list[dict[str, float]], reference_accuracy: float, max_drop: float = 0.02
) -> dict | None:
    """The curve point with the largest MAC speed-up whose accuracy is within ``max_drop``."""
    ok = [row for row in curve if row["accuracy"] >= reference_accuracy - max_drop - 1e-12]
    return max(ok, key=lambda r: r["mac_speedup"]) if ok else None


def speedup_at(curve: list[dict[str, float]], speedup: float) -> float | None:
    """Accuracy interpolated at a given MAC speed-up (None when the curve does not reach it)."""
    pts = sorted((r["mac_speedup"], r["accuracy"]) for r in curve)
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    if speedup < xs.min() or speedup > xs.max():
        return None
    return float(np.interp(speedup, xs, ys))


def format_curve(curve: list[dict[str, float]]) -> str:
    lines = [f"{'threshold':>9} {'accuracy':>9} {'MAC x':>7} {'layer x':>8} {'mean layer':>10}"]
    for r in curve:
        lines.append(
            f"{r['threshold']:>9.3f} {r['accuracy']:>9.4f} {r['mac_speedup']:>7.2f} "
            f"{r['layer_speedup']:>8.2f} {r['mean_exit_layer']:>10.2f}"
        )
    return "\n".join(lines)
