"""LGViT stage-2 distillation losses: prediction (KD), heterogeneous and homogeneous.

- Prediction: ``(1 - gamma) * CE(student, y) + gamma * T^2 * KL(teacher/T || student/T)``.
- Heterogeneous: the first and last LPH and the first and last GAH match the final layer's
  patch tokens, brought to each head's token grid by a small aligning module (depthwise 3x3
  conv, BN, GELU, then average pooling to the head's grid); compared with a KL divergence
  between per-token softmax distributions over channels, averaged over the four heads.
- Homogeneous: earlier LPHs match the last LPH's feature map by MSE; earlier GAHs match the
  last GAH through Gram matrices ``F^T F / N'`` (D x D), so grids of different size compare.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def _sum(losses: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum(losses)`` in the same order, typed as a tensor (no ``0`` start; at least one loss)."""
    return functools.reduce(operator.add, losses)


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, gamma: float, temperature: float
) -> torch.Tensor:
    """Vanilla knowledge distillation mixing hard labels and the teacher's softened logits."""
    ce = F.cross_entropy(student, labels)
    if gamma == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher.detach() / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return (1.0 - gamma) * ce + gamma * (t * t) * kl


def token_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between per-token softmax distributions over channels, (B, N, D) inputs."""
    s = F.log_softmax(student.flatten(0, 1), dim=-1)  # (B*N, D)
    t = F.log_softmax(teacher.flatten(0, 1), dim=-1)  # (B*N, D)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def gram(feature: torch.Tensor) -> torch.Tensor:
    """Per-sample Gram matrix F^T F / N of a (B, N, D) feature map, shape (B, D, D)."""
    return feature.transpose(1, 2) @ feature / feature.shape[1]


class AlignModule(nn.Module):
    """Brings the final layer's (B, H*W, D) patch tokens to a head's (B, h*w, D) grid."""

    def __init__(self, dim: int, grid: tuple[int, int], out_grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid, self.out_grid = grid, out_grid
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = patches.shape
        x = patches.transpose(1, 2).reshape(batch, dim, *self.grid)  # (B, D, H, W)
        x = self.act(self.norm(self.conv(x)))  # (B, D, H, W)
        x = F.adaptive_avg_pool2d(x, self.out_grid)  # (B, D, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, h*w, D)


def _out_grid(feature_tokens: int) -> tuple[int, int]:
    side = int(round(math.sqrt(feature_tokens)))
    if side * side != feature_tokens:
        raise ValueError(f"head feature has {feature_tokens} tokens, not a square grid")
    return side, side


class LGViTDistillation(nn.Module):
    """Stage-2 loss over all exits of a ViT encoder with LPH/GAH heads (or MLP heads: KD only).

    Args:
        head_kinds: Kind of each internal head (``"lph"``, ``"gah"``, ``"mlp"``).
        head_tokens: Token count of each internal head's feature map.
        dim: Token width D.
        grid: The backbone's patch grid.
        gamma: KD weight of the teacher term (paper's gamma; 0.3 in LGViT's code).
        temperature: KD temperature T (2).
        het_weight: Weight of the heterogeneous term (0.01).
        hom_weight: Weight of the homogeneous term (0.01).
        pred_exits: ``"all"`` (KD on every internal exit) or ``"paper"`` (only the last LPH and
            last GAH, as the paper's Eq. 13; earlier heads then learn only from features).
    """

    def __init__(
        self,
        head_kinds: list[str],
        head_tokens: list[int],
        dim: int,
        grid: tuple[int, int],
        gamma: float = 0.3,
        temperature: float = 2.0,
        het_weight: float = 0.01,
        hom_weight: float = 0.01,
        pred_exits: str = "all",
    ) -> None:
        super().__init__()
        if pred_exits not in ("all", "paper"):
            raise ValueError(f"pred_exits must be 'all' or 'paper', got {pred_exits!r}")
        self.kinds = list(head_kinds)
        self.gamma, self.temperature = gamma, temperature
        self.het_weight, self.hom_weight = het_weight, hom_weight
        self.pred_exits = pred_exits
        lph = [i for i, k in enumerate(self.kinds) if k == "lph"]
        gah = [i for i, k in enumerate(self.kinds) if k == "gah"]
        self.lph, self.gah = lph, gah
        self.het_heads = sorted({*(lph[:1] + lph[-1:]), *(gah[:1] + gah[-1:])})
        self.align = nn.ModuleDict(
            {str(i): AlignModule(dim, grid, _out_grid(head_tokens[i])) for i in self.het_heads}
        )

    def forward(
        self,
        logits: list[torch.Tensor],
        features: list[torch.Tensor],
        final_logits: torch.Tensor,
        final_patches: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total stage-2 loss and its parts.

        Args:
            logits: Internal exits' logits, (B, C) each.
            features: Internal heads' feature maps, (B, N', D) each.
            final_logits: The frozen final classifier's logits (the teacher), (B, C).
            final_patches: The final layer's normalized patch tokens, (B, N, D).
            labels: (B,) class labels.
        """
        if self.pred_exits == "all" or not (self.lph or self.gah):
            pred_idx = list(range(len(logits)))
        else:
            pred_idx = sorted({*(self.lph[-1:]), *(self.gah[-1:])})
        pred = _sum(kd_loss(logits[i], final_logits, labels, self.gamma, self.temperature) for i in pred_idx)
        zero = final_logits.new_zeros(())
        het = zero
        if self.het_heads:
            target = final_patches.detach()
            het = _sum(token_kl(features[i], self.align[str(i)](target)) for i in self.het_heads) / len(
                self.het_heads
            )
        hom = zero
        if len(self.lph) > 1:
            ref = features[self.lph[-1]].detach()
            hom = hom + _sum(F.mse_loss(features[i], ref) for i in self.lph[:-1]) / (len(self.lph) - 1)
        if len(self.gah) > 1:
            ref_gram = gram(features[self.gah[-1]].detach())
            hom = hom + _sum(F.mse_loss(gram(features[i]), ref_gram) for i in self.gah[:-1]) / (
                len(self.gah) - 1
            )
        total = pred + self.het_weight * het + self.hom_weight * hom
        parts = {"pred": float(pred.detach()), "het": float(het.detach()), "hom": float(hom.detach())}
        return total, parts
