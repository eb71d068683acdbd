"""Rows of a batch: inputs joined into one batch, exit outputs gathered by row, per-row results.

Helpers of :class:`~exitflow.pipeline.inference.batch_engine.BatchEngine`: a sample's exit output
is a row of a batched :class:`~encoders.base.ExitOutput`; a fusion head runs over the rows of the
samples that want it, gathered (no copy when they are all the rows of one output); the batch's
meter window is shared among its decisions by MACs.
"""

from __future__ import annotations

from typing import Any

import torch

from exitflow.encoders.base import ExitOutput
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.messages import Decision


def concat_inputs(inputs: list[Any]) -> Any:
    """Adapted inputs (each with a batch axis of 1) as one batch: tensors on axis 0, lists joined."""
    if all(isinstance(x, torch.Tensor) for x in inputs):
        return torch.cat(inputs, dim=0)
    if all(isinstance(x, list) for x in inputs):
        return [item for x in inputs for item in x]
    raise ExitflowError(f"inputs of types {sorted({type(x).__name__ for x in inputs})} do not batch")


def gather_rows(rows: list[tuple[ExitOutput, int]]) -> ExitOutput:
    """One :class:`ExitOutput` over the given (batch output, row) pairs, in order (no copy when they
    are all the rows of one output, one ``index_select`` when they come from one output)."""
    first = rows[0][0]
    index = [r for _, r in rows]
    if all(out is first for out, _ in rows):
        if index == list(range(first.logits.shape[0])):
            return first
        picked = torch.tensor(index, device=first.logits.device)

        def pick(name: str) -> torch.Tensor | None:
            t = getattr(first, name)
            return None if t is None else t.index_select(0, picked)
    else:
        def pick(name: str) -> torch.Tensor | None:
            if getattr(first, name) is None:
                return None
            return torch.cat([getattr(out, name)[r : r + 1] for out, r in rows], dim=0)

    def need(name: str) -> torch.Tensor:
        t = pick(name)
        if t is None:
            raise ExitflowError(f"an exit output has no {name}; it cannot be fused in a batch")
        return t

    return ExitOutput(
        logits=need("logits"), embedding=need("embedding"), hidden=need("hidden"), confidence=need("confidence"),
        layer=first.layer, exit_index=first.exit_index, macs=first.macs, attention_mask=pick("attention_mask"),
    )


def record_fusion_row(d: Decision, fused: Any, r: int) -> None:
    """Row ``r`` of a ``fuse_exits`` result into its decision (as ``Engine._fuse`` does at batch 1)."""
    d.fused_checks += 1
    d.fusion_layers = {m: int(v[r]) for m, v in getattr(fused, "exit_layers", {}).items()}
    if getattr(fused, "kept_token_ratio", None) is not None:
        d.kept_tokens = {"fusion": float(fused.kept_token_ratio[r])}
    if getattr(fused, "kept_head_ratio", None) is not None:
        d.kept_heads = float(fused.kept_head_ratio[r])
    d.macs += int(fused.macs[r]) if getattr(fused, "macs", None) is not None else 0


def apportion_energy(decisions: list[Decision], measurement: Any) -> None:
    """Share one window's ``measurement`` among ``decisions`` in proportion to their MACs."""
    if not decisions:
        return
    total_macs = sum(d.macs for d in decisions)
    for d in decisions:
        share = d.macs / total_macs if total_macs > 0 else 1.0 / len(decisions)
        d.energy_source = str(measurement.source)
        d.estimated = bool(measurement.estimated)
        d.energy_mj = _scaled(measurement.energy_mj, share)
        d.dynamic_energy_mj = _scaled(getattr(measurement, "dynamic_energy_mj", None), share)
        d.idle_energy_mj = _scaled(getattr(measurement, "idle_energy_mj", None), share)


def _scaled(value: float | None, share: float) -> float | None:
    return None if value is None else float(value) * share
