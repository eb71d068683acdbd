"""Batched early-exit inference that decides per sample and really stops exited samples.

After each exit, the samples whose rule fired leave the batch (``encoder.select``), so later
layers run only for the samples still in flight. Results come back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.exit_rules import PatienceCounter, cosine_to_previous, rule_score


@dataclass
class EarlyExitResult:
    """Per-sample outcome: ``logits`` (B, C) of the exit taken, ``exit_index``, ``layer`` and
    cumulative ``macs`` (B,), each in input order."""

    logits: torch.Tensor
    exit_index: torch.Tensor
    layer: torch.Tensor
    macs: torch.Tensor

    @property
    def prediction(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)


def exit_now(
    rule: str, threshold: float, logits: torch.Tensor, embedding: torch.Tensor, memory: dict[str, Any]
) -> torch.Tensor:
    """Boolean (B,) of the samples whose ``rule`` fires at this exit; ``memory`` carries rule state.

    Rules: ``max_prob`` (max softmax >= threshold), ``entropy`` (normalized entropy <=
    1 - threshold, i.e. the threshold is a confidence), ``patience`` (the prediction repeated
    at ``int(threshold)`` consecutive exits), ``cosine`` (cosine of the pooled embedding to the
    previous exit's >= threshold; never at the first exit).
    """
    if rule in ("max_prob", "entropy"):
        return rule_score(rule, logits) >= threshold
    if rule == "patience":
        counter = memory.setdefault("patience", PatienceCounter())
        return counter.update(logits) >= int(threshold)
    if rule == "cosine":
        prev = memory.get("embedding")
        memory["embedding"] = embedding
        if prev is None:
            return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        return cosine_to_previous(embedding, prev) >= threshold
    raise ValueError(f"unknown exit rule {rule!r}; choose max_prob, entropy, patience or cosine")


def _keep_memory(memory: dict[str, Any], keep: torch.Tensor) -> None:
    if "patience" in memory:
        memory["patience"].select(keep)
    if memory.get("embedding") is not None:
        memory["embedding"] = memory["embedding"][keep]


@torch.no_grad()
def run_early_exit(
    encoder: EarlyExitEncoder, x: Any, rule: str = "max_prob", threshold: float = 0.9
) -> EarlyExitResult:
    """Run ``encoder`` on the batch ``x``, each sample leaving at the first exit its rule allows.

    Args:
        encoder: An encoder with ``select(state, index)`` (every exitflow encoder has it).
        x: The batch (tensor or list of strings).
        rule: ``max_prob``, ``entropy``, ``patience`` or ``cosine`` (see :func:`exit_now`).
        threshold: The rule's threshold.

    Returns:
        Per-sample logits, exit index, layer and cumulative MACs, in input order.
    """
    state = encoder.start(x)
    batch = state.hidden.shape[0]
    active = torch.arange(batch)
    memory: dict[str, Any] = {}
    logits_out: torch.Tensor | None = None
    exit_index = torch.full((batch,), -1, dtype=torch.long)
    layer = torch.zeros(batch, dtype=torch.long)
    macs = torch.zeros(batch, dtype=torch.long)
    while not encoder.done(state):
        out = encoder.step(state)
        fire = exit_now(rule, threshold, out.logits, out.embedding, memory).cpu()
        if encoder.done(state):
            fire = torch.ones_like(fire)
        if logits_out is None:
            logits_out = torch.zeros(batch, out.logits.shape[1], dtype=out.logits.dtype)
        rows = active[fire]
        logits_out[rows] = out.logits[fire].cpu()
        exit_index[rows] = out.exit_index
        layer[rows] = out.layer
        macs[rows] = out.macs
        keep = (~fire).nonzero().flatten()
        if keep.numel() == 0:
            break
        state = encoder.select(state, keep)
        _keep_memory(memory, keep)
        active = active[keep]
    if logits_out is None:
        raise ValueError("encoder has no exits")
    return EarlyExitResult(logits_out, exit_index, layer, macs)
