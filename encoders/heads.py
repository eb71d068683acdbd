"""Exit heads: LGViT's local perception head (LPH) and global aggregation head (GAH), an MLP head.

Every ViT head takes the backbone's token states after its exit layer, ``(B, 1 + H*W, D)``
with the CLS token first, and returns a :class:`HeadOutput`: class logits, the pooled
embedding that was classified, and the head's token feature map that stage-2 distillation
compares. The kernel size of an LPH shrinks with depth and the pooling window of a GAH grows
with depth; :func:`lph_kernel_sizes` and :func:`gah_window_sizes` are those two linear maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

HeadType = Literal["lgvit", "mlp"]


@dataclass
class HeadOutput:
    """What a head computed: ``logits`` (B, C), ``embedding`` (B, D), ``feature`` (B, N', D)."""

    logits: torch.Tensor
    embedding: torch.Tensor
    feature: torch.Tensor


def lph_kernel_sizes(num_heads: int, k_max: int = 5, k_min: int = 0) -> list[int]:
    """Depthwise kernel size of each LPH, a decreasing linear map of the exit position.

    Position ``i`` of ``n`` gets ``k_max - (k_max - k_min) * i / (n - 1)``, rounded down to an
    odd size so that "same" padding keeps the grid; a size below 1 becomes 0, which means the
    depthwise convolution is bypassed.

    Args:
        num_heads: How many LPHs (the lower half of the exits).
        k_max: Kernel size at the shallowest LPH (odd, >= 1).
        k_min: Kernel size the map reaches at the deepest LPH (0 = bypass).

    Returns:
        One kernel size per LPH, non-increasing, each 0 or odd.
    """
    if num_heads < 0:
        raise ValueError(f"num_heads must be >= 0, got {num_heads}")
    if k_max < 1 or k_max % 2 == 0 or not 0 <= k_min <= k_max:
        raise ValueError(f"need an odd k_max >= 1 and 0 <= k_min <= k_max, got k_max={k_max}, k_min={k_min}")
    sizes = []
    for i in range(num_heads):
        raw = k_max if num_heads == 1 else k_max - (k_max - k_min) * i / (num_heads - 1)
        k = int(math.floor(raw + 1e-9))
        if k % 2 == 0:
            k -= 1
        sizes.append(max(k, 0))
    return sizes


def gah_window_sizes(num_heads: int, s_min: int = 2, s_max: int = 3) -> list[int]:
    """Pooling window of each GAH, an increasing linear map of the exit position (minimum 2).

    Args:
        num_heads: How many GAHs (the upper half of the exits).
        s_min: Window at the shallowest GAH (>= 2).
        s_max: Window at the deepest GAH (>= s_min).

    Returns:
        One window size per GAH, non-decreasing, each >= 2.
    """
    if num_heads < 0:
        raise ValueError(f"num_heads must be >= 0, got {num_heads}")
    if s_min < 2 or s_max < s_min:
        raise ValueError(f"need 2 <= s_min <= s_max, got s_min={s_min}, s_max={s_max}")
    if num_heads == 1:
        return [s_min]
    return [int(round(s_min + (s_max - s_min) * i / (num_heads - 1))) for i in range(num_heads)]


def _to_grid(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    batch, tokens, dim = patches.shape
    if tokens != grid[0] * grid[1]:
        raise ValueError(f"expected {grid[0]}x{grid[1]}={grid[0] * grid[1]} patch tokens, got {tokens}")
    return patches.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])  # (B, D, H, W)


def _conv_bn_gelu(c_in: int, c_out: int, kernel: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


class LocalPerceptionHead(nn.Module):
    """LPH: 1x1 expand -> depthwise kxk (k = 0: bypass) -> 1x1 back, BN + GELU after each conv;
    average pool over the patch tokens, plus the CLS token, then a linear classifier."""

    def __init__(
        self, dim: int, num_classes: int, grid: tuple[int, int], kernel_size: int, expand: int = 2
    ) -> None:
        super().__init__()
        if kernel_size != 0 and kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be 0 (bypass) or odd, got {kernel_size}")
        hidden = dim * expand
        self.grid = grid
        self.kernel_size = kernel_size
        self.norm = nn.LayerNorm(dim)
        self.expand = _conv_bn_gelu(dim, hidden, 1)
        self.depthwise = (
            _conv_bn_gelu(hidden, hidden, kernel_size, groups=hidden) if kernel_size else nn.Identity()
        )
        self.project = _conv_bn_gelu(hidden, dim, 1)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, hidden: torch.Tensor) -> HeadOutput:
        tokens = self.norm(hidden)  # (B, 1+N, D)
        cls, grid = tokens[:, 0], _to_grid(tokens[:, 1:], self.grid)  # (B, D), (B, D, H, W)
        local = self.project(self.depthwise(self.expand(grid)))  # (B, D, H, W)
        embedding = local.mean(dim=(2, 3)) + cls  # (B, D)
        feature = local.flatten(2).transpose(1, 2)  # (B, N, D)
        return HeadOutput(self.classifier(embedding), embedding, feature)


class SelfAttention(nn.Module):
    """Plain multi-head self-attention written with matmuls (so the flop counter sees all of it)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, h, N, d)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)  # (B, h, N, N)
        y = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)  # (B, N, D)
        return self.out(y)


class GlobalAggregationHead(nn.Module):
    """GAH: patch grid -> sxs average pooling (position-wise feature convergence) -> multi-head
    self-attention -> average pool, plus the CLS token, then a linear classifier."""

    def __init__(
        self, dim: int, num_classes: int, grid: tuple[int, int], window: int, num_heads: int = 4
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.grid = grid
        self.window = window
        self.pooled_grid = (math.ceil(grid[0] / window), math.ceil(grid[1] / window))
        self.norm = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, num_heads)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, hidden: torch.Tensor) -> HeadOutput:
        tokens = self.norm(hidden)  # (B, 1+N, D)
        cls, grid = tokens[:, 0], _to_grid(tokens[:, 1:], self.grid)  # (B, D), (B, D, H, W)
        pooled = F.adaptive_avg_pool2d(grid, self.pooled_grid)  # (B, D, H/s, W/s)
        feature = self.attention(pooled.flatten(2).transpose(1, 2))  # (B, N/s^2, D)
        embedding = feature.mean(dim=1) + cls  # (B, D)
        return HeadOutput(self.classifier(embedding), embedding, feature)


class MLPHead(nn.Module):
    """The plain exit of most early-exit work: average pool of the patch tokens + CLS, linear."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, hidden: torch.Tensor) -> HeadOutput:
        tokens = self.norm(hidden)  # (B, 1+N, D)
        embedding = tokens[:, 1:].mean(dim=1) + tokens[:, 0]  # (B, D)
        return HeadOutput(self.classifier(embedding), embedding, embedding.unsqueeze(1))


def build_vit_heads(
    head_type: HeadType,
    num_internal: int,
    dim: int,
    num_classes: int,
    grid: tuple[int, int],
    lph_expand: int = 2,
    lph_kernel_max: int = 5,
    lph_kernel_min: int = 0,
    gah_window_min: int = 2,
    gah_window_max: int = 3,
    gah_heads: int = 4,
) -> tuple[nn.ModuleList, list[str]]:
    """Heads for the internal exits: LPHs on the lower half, GAHs on the upper half (or all MLP).

    Returns:
        The heads and their kinds (``"lph"``, ``"gah"`` or ``"mlp"``), one per internal exit.
    """
    if head_type == "mlp":
        return nn.ModuleList(MLPHead(dim, num_classes) for _ in range(num_internal)), ["mlp"] * num_internal
    if head_type != "lgvit":
        raise ValueError(f"head_type must be 'lgvit' or 'mlp', got {head_type!r}")
    num_lph = (num_internal + 1) // 2
    num_gah = num_internal - num_lph
    heads: list[nn.Module] = [
        LocalPerceptionHead(dim, num_classes, grid, k, lph_expand)
        for k in lph_kernel_sizes(num_lph, lph_kernel_max, lph_kernel_min)
    ]
    heads += [
        GlobalAggregationHead(dim, num_classes, grid, s, gah_heads)
        for s in gah_window_sizes(num_gah, gah_window_min, gah_window_max)
    ]
    return nn.ModuleList(heads), ["lph"] * num_lph + ["gah"] * num_gah


class TextExitHead(nn.Module):
    """Exit head for text: masked mean pool (or CLS) -> Linear -> GELU -> Linear."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.pooling = pooling
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, D) token states and (B, N) mask -> (B, D) pooled feature."""
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, N, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # (B, D)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> HeadOutput:
        embedding = self.pool(hidden, mask)  # (B, D)
        return HeadOutput(self.mlp(embedding), embedding, embedding.unsqueeze(1))
