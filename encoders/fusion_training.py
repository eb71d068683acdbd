"""Training objectives of adaptive fusion: MuE's layer-averaged task loss and SmartTrim's terms.

The full objective of one batch (:func:`fusion_objective`) is

    L = L_task(trimmed) + lambda_sd * (L_task(full) + KL(trimmed || full)) + lambda_cost * L_cost

where ``L_task`` averages cross-entropy over the classifier on every fusion layer (MuE: every
stopping point must predict), ``full`` is the same network with the trimmers switched off
(SmartTrim's self-distillation: the trimmed network is pulled toward the full one, which is
trained on the task too), and ``L_cost`` is the mean squared gap between each trimmer's kept
ratio and its target. Targets follow a linear curriculum: 1.0 (keep all) at the start, the
final ratio after ``ramp_fraction`` of training.

The KL term follows the issue's direction, ``KL(p_trimmed || p_full)``, with the full model's
distribution detached so that it acts as the teacher and is trained only by its own task loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exitflow.encoders.fusion import FusionOutput


def layer_averaged_loss(per_layer_logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over layers; logits (B, C) or (B, T, V) with labels (B,) or (B, T).

    Labels equal to -100 are ignored (padding), as in ``nn.functional.cross_entropy``.
    """
    if not per_layer_logits:
        raise ValueError("layer_averaged_loss: no per-layer logits; run the model with all_layer_logits=True")
    losses = [
        nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), labels.reshape(-1))
        for lg in per_layer_logits
    ]
    return torch.stack(losses).mean()


def kl_trimmed_to_full(trimmed_logits: torch.Tensor, full_logits: torch.Tensor) -> torch.Tensor:
    """Batch-mean ``KL(p_trimmed || p_full)`` with the full model detached (the teacher)."""
    log_p = nn.functional.log_softmax(trimmed_logits, dim=-1)  # (B, C)
    log_q = nn.functional.log_softmax(full_logits.detach(), dim=-1)  # (B, C)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def cost_loss(ratios: list[torch.Tensor], target: float) -> torch.Tensor:
    """SmartTrim's cost loss: mean over trimmer modules of (batch-mean kept ratio - target)^2."""
    if not ratios:
        return torch.zeros(())
    kept = torch.stack([r.mean() for r in ratios])  # (P,)
    return ((kept - target) ** 2).mean()


def curriculum_target(progress: float, final: float, ramp_fraction: float) -> float:
    """Kept-ratio target: 1.0 at ``progress`` 0, linearly down to ``final`` at ``ramp_fraction``.

    Args:
        progress: Share of training done, in [0, 1].
        final: Target kept ratio at the end of the ramp, in (0, 1].
        ramp_fraction: Share of training over which the target falls (0 = final from the start).
    """
    if not 0.0 < final <= 1.0:
        raise ValueError(f"curriculum_target: final ratio must be in (0, 1], got {final}")
    if ramp_fraction <= 0:
        return final
    share = min(max(progress / ramp_fraction, 0.0), 1.0)
    return 1.0 - share * (1.0 - final)


@dataclass
class ObjectiveParts:
    """The terms of one batch's loss, for logging (floats) and the total to backpropagate."""

    total: torch.Tensor
    task: float
    self_distill: float
    cost: float
    token_target: float
    head_target: float


def fusion_objective(
    trimmed: FusionOutput,
    full: FusionOutput | None,
    labels: torch.Tensor,
    token_target: float,
    head_target: float,
    lambda_sd: float = 1.0,
    lambda_cost: float = 20.0,
) -> ObjectiveParts:
    """Combine MuE's layer-averaged task loss with SmartTrim's cost and self-distillation terms.

    Args:
        trimmed: Output with trimmers on (training masks), run with ``all_layer_logits``.
        full: Output of the same model with ``trim=False``, or None to skip self-distillation.
        labels: (B,) class ids.
        token_target: Current kept-ratio target of the token trimmers.
        head_target: Current kept-ratio target of the head trimmers.
        lambda_sd: Weight of the self-distillation term (SmartTrim used 1.0).
        lambda_cost: Weight of the cost loss (SmartTrim used 20.0).
    """
    task = layer_averaged_loss(trimmed.per_layer_logits, labels)
    total = task
    sd_value = 0.0
    if full is not None:
        sd = layer_averaged_loss(full.per_layer_logits, labels) + kl_trimmed_to_full(
            trimmed.logits, full.logits
        )
        total = total + lambda_sd * sd
        sd_value = float(sd.detach())
    cost = cost_loss(trimmed.token_ratios, token_target) + cost_loss(trimmed.head_ratios, head_target)
    total = total + lambda_cost * cost.to(total.device)
    return ObjectiveParts(
        total=total,
        task=float(task.detach()),
        self_distill=sd_value,
        cost=float(cost.detach()),
        token_target=token_target,
        head_target=head_target,
    )
