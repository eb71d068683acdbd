"""SmartTrim trimmers: which tokens and attention heads a fusion layer keeps, per sample.

A :class:`TokenTrimmer` scores every token of one modality stream before a fusion layer: a local
score from the token's own (projected) features through a small MLP, plus, in ``"cross"`` mode, a
bilinear score between the projected token and a global vector made from the stream's own CLS
token and the other modalities' CLS tokens. A :class:`HeadTrimmer` scores the heads of one
attention module from the CLS tokens (own CLS for self-attention, own + other for
cross-attention) or, in ``"random"`` mode, keeps a random subset of the target size (the
ablation baseline).

Scores become masks through :func:`gumbel_sigmoid`: in training a noisy sigmoid with a
straight-through hard 0/1 value, at inference the hard mask ``score > 0`` (keep when the kept
probability passes one half). The trimmers start with a large positive bias so that every
token and head is kept at the start of training (SmartTrim's stable initialization); the
curriculum and cost loss that lower the kept ratio live in ``encoders/fusion_training.py``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

TokenScoreMode = Literal["cross", "local"]
HeadMaskMode = Literal["learned", "random"]

Count = int | torch.Tensor  # a per-sample count: a Python int or an integer tensor (B,)

KEEP_ALL_BIAS = 3.0  # sigmoid(3) ~= 0.95: everything kept at initialization


def gumbel_sigmoid(
    logits: torch.Tensor, tau: float = 1.0, training: bool = True, hard: bool = True
) -> torch.Tensor:
    """Binary-concrete relaxation of a Bernoulli mask with keep-logit ``logits``.

    Training: ``sigmoid((logits + g1 - g2) / tau)`` with two independent Gumbel noises; with
    ``hard`` the forward value is the 0/1 rounding and the gradient is the soft one
    (straight-through). Inference: the deterministic mask ``logits > 0`` as float.

    Args:
        logits: Keep logits, any shape.
        tau: Temperature (> 0); lower is closer to binary.
        training: Sample noise and keep gradients (True) or threshold (False).
        hard: Return straight-through 0/1 values in training.

    Returns:
        Mask of the same shape, values in [0, 1] (exactly 0/1 when ``hard`` or not training).
    """
    if tau <= 0:
        raise ValueError(f"gumbel_sigmoid: tau must be > 0, got {tau}; use e.g. 1.0")
    if not training:
        return (logits > 0).to(logits.dtype)
    eps = torch.finfo(logits.dtype).tiny
    u1 = torch.rand_like(logits).clamp_min(eps)
    u2 = torch.rand_like(logits).clamp_min(eps)
    g1, g2 = -torch.log(-torch.log(u1)), -torch.log(-torch.log(u2))
    soft = torch.sigmoid((logits + g1 - g2) / tau)
    if not hard:
        return soft
    hard_mask = (soft > 0.5).to(soft.dtype)
    return hard_mask - soft.detach() + soft


class TokenTrimmer(nn.Module):
    """Per-token keep scores for one modality stream at one fusion layer.

    Args:
        dim: Token width D of the fusion stream.
        score_dim: Width D' of the projected token features.
        mode: ``"cross"`` adds the bilinear global score from both modalities' CLS tokens;
            ``"local"`` uses only the per-token MLP score (ablation).
    """

    def __init__(self, dim: int, score_dim: int = 32, mode: TokenScoreMode = "cross"):
        super().__init__()
        if mode not in ("cross", "local"):
            raise ValueError(f"TokenTrimmer: mode must be 'cross' or 'local', got {mode!r}")
        self.mode = mode
        self.proj = nn.Linear(dim, score_dim)
        local_out = nn.Linear(score_dim // 2, 1)
        self.local = nn.Sequential(nn.GELU(), nn.Linear(score_dim, score_dim // 2), nn.GELU(), local_out)
        self.global_mlp = nn.Sequential(nn.Linear(2 * dim, score_dim), nn.GELU()) if mode == "cross" else None
        self.bilinear = nn.Linear(score_dim, score_dim, bias=False) if mode == "cross" else None
        nn.init.zeros_(local_out.weight)
        nn.init.constant_(local_out.bias, KEEP_ALL_BIAS)
        if self.bilinear is not None:
            nn.init.normal_(self.bilinear.weight, std=1e-3)

    def forward(self, tokens: torch.Tensor, cls_self: torch.Tensor, cls_other: torch.Tensor) -> torch.Tensor:
        """Keep logits of every token.

        Args:
            tokens: (B, N, D) stream tokens entering the layer.
            cls_self: (B, D) the stream's CLS token.
            cls_other: (B, D) mean CLS of the other present modalities (zeros when none).

        Returns:
            (B, N) keep logits.
        """
        h = self.proj(tokens)  # (B, N, D')
        score = self.local(h).squeeze(-1)  # (B, N)
        if self.global_mlp is not None and self.bilinear is not None:
            g = self.global_mlp(torch.cat([cls_self, cls_other], dim=-1))  # (B, D')
            score = score + torch.einsum("bd,bnd->bn", self.bilinear(g), h)  # (B, N)
        return score

    def macs(self, n: Count) -> Count:
        """Per-sample MACs of scoring ``n`` tokens."""
        d_in, d_s = self.proj.in_features, self.proj.out_features
        total = n * (d_in * d_s + d_s * (d_s // 2) + d_s // 2)
        if self.mode == "cross":
            total = total + 2 * d_in * d_s + d_s * d_s + n * d_s
        return total


class HeadTrimmer(nn.Module):
    """Per-head keep scores of one attention module from CLS tokens.

    Args:
        dim: Fusion width D.
        num_heads: Heads H of the module.
        cross: The module is a cross-attention (scores from own + other CLS) rather than a
            self-attention (own CLS only).
        mode: ``"learned"`` (SmartTrim) or ``"random"``: keep ``round(target * H)`` random heads
            per sample (ablation baseline), where ``target`` is set by the training loop.
    """

    def __init__(self, dim: int, num_heads: int, cross: bool, mode: HeadMaskMode = "learned"):
        super().__init__()
        if mode not in ("learned", "random"):
            raise ValueError(f"HeadTrimmer: mode must be 'learned' or 'random', got {mode!r}")
        self.mode = mode
        self.cross = cross
        self.num_heads = num_heads
        self.target = 1.0
        in_dim = 2 * dim if cross else dim
        mlp_in, mlp_out = nn.Linear(in_dim, dim // 2), nn.Linear(dim // 2, num_heads)
        self.mlp = nn.Sequential(mlp_in, nn.GELU(), mlp_out)
        self.macs_per_sample = (
            mlp_in.in_features * mlp_in.out_features + mlp_out.in_features * mlp_out.out_features
        )
        nn.init.zeros_(mlp_out.weight)
        nn.init.constant_(mlp_out.bias, KEEP_ALL_BIAS)

    def forward(self, cls_self: torch.Tensor, cls_other: torch.Tensor) -> torch.Tensor:
        """Keep logits of every head, (B, H); random mode returns +/-1 logits of a random subset."""
        if self.mode == "random":
            batch = cls_self.shape[0]
            keep = max(1, round(self.target * self.num_heads))
            order = torch.rand(batch, self.num_heads, device=cls_self.device).argsort(dim=-1)  # (B, H)
            logits = torch.full((batch, self.num_heads), -10.0, device=cls_self.device, dtype=cls_self.dtype)
            return logits.scatter(1, order[:, :keep], 10.0)  # (B, H)
        x = torch.cat([cls_self, cls_other], dim=-1) if self.cross else cls_self  # (B, D or 2D)
        return self.mlp(x)  # (B, H)

    def macs(self) -> int:
        """Per-sample MACs of scoring the heads (none for random masks)."""
        if self.mode == "random":
            return 0
        return self.macs_per_sample


def compact_tokens(tokens: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Really remove dropped tokens: gather the kept ones to the front, in their order.

    The batch keeps a common length, the largest kept count; shorter rows are padded with
    tokens whose ``keep`` is 0 (so attention ignores them). With a batch of one nothing
    dropped survives.

    Args:
        tokens: (B, N, D) token states.
        keep: (B, N) 0/1 mask of tokens to keep.

    Returns:
        ``(tokens, keep)`` of shapes (B, N', D) and (B, N') with N' = max kept count.
    """
    counts = keep.sum(dim=1)  # (B,)
    new_len = int(counts.max().item()) if counts.numel() else 0
    new_len = max(new_len, 1)
    order = torch.argsort((keep <= 0).to(torch.int8), dim=1, stable=True)[:, :new_len]  # (B, N')
    gathered = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, N', D)
    return gathered, keep.gather(1, order)  # (B, N', D), (B, N')


def masked_attention_weights(scores: torch.Tensor, key_keep: torch.Tensor) -> torch.Tensor:
    """Softmax over keys where each key is weighted by its keep value (0 drops it).

    ``w_j = keep_j * exp(s_j) / sum_k keep_k * exp(s_k)``: with 0/1 masks this is the softmax
    over kept keys, and with straight-through masks the gradient reaches the trimmer.

    Args:
        scores: (B, H, Nq, Nk) attention logits.
        key_keep: (B, Nk) keep values in [0, 1].

    Returns:
        (B, H, Nq, Nk) attention weights; a row with no kept key is all zeros.
    """
    keep = key_keep[:, None, None, :].to(scores.dtype)  # (B, 1, 1, Nk)
    peak = scores.masked_fill(keep <= 0, float("-inf")).amax(dim=-1, keepdim=True)  # (B, H, Nq, 1)
    peak = torch.nan_to_num(peak, neginf=0.0).detach()
    weights = torch.exp(scores - peak) * keep  # (B, H, Nq, Nk)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


class HeadSlicedAttention(nn.Module):
    """Multi-head attention whose hard head masks slice the q/k/v/out projections.

    Soft or training masks multiply each head's output. A hard mask at inference computes only
    the heads some sample in the batch keeps: the rows of the q/k/v weights and the columns of
    the output weight of the other heads are never multiplied (with a batch of one, exactly the
    kept heads run), and a sample's dropped heads among those are zeroed.

    Args:
        dim: Model width D.
        num_heads: Heads H; ``dim`` must be divisible by it.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"HeadSlicedAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        key_keep: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        hard: bool = False,
    ) -> torch.Tensor:
        """Attend from ``query`` tokens to ``context`` tokens.

        Args:
            query: (B, Nq, D).
            context: (B, Nk, D).
            key_keep: (B, Nk) keep values of the context tokens.
            head_mask: (B, H) head keep values, or None for all heads.
            hard: ``head_mask`` is 0/1 and dropped heads are really not computed.

        Returns:
            (B, Nq, D) attention output (after the output projection).
        """
        batch, n_q, _ = query.shape
        n_k = context.shape[1]
        heads = torch.arange(self.num_heads, device=query.device)
        if hard and head_mask is not None:
            heads = torch.nonzero(head_mask.amax(dim=0) > 0).flatten()  # (H',)
        n_h = int(heads.numel())
        if n_h == 0:
            return self.out.bias.expand(batch, n_q, self.dim)  # (B, Nq, D)
        wq: torch.Tensor
        bq: torch.Tensor
        wk: torch.Tensor
        bk: torch.Tensor
        wv: torch.Tensor
        bv: torch.Tensor
        wo: torch.Tensor
        if n_h == self.num_heads:
            wq, bq, wk, bk = self.q.weight, self.q.bias, self.k.weight, self.k.bias
            wv, bv, wo = self.v.weight, self.v.bias, self.out.weight
        else:
            rows = (
                heads[:, None] * self.head_dim + torch.arange(self.head_dim, device=heads.device)
            ).flatten()
            wq, bq = self.q.weight[rows], self.q.bias[rows]
            wk, bk = self.k.weight[rows], self.k.bias[rows]
            wv, bv = self.v.weight[rows], self.v.bias[rows]
            wo = self.out.weight[:, rows]
        shape_q, shape_k = (batch, n_q, n_h, self.head_dim), (batch, n_k, n_h, self.head_dim)
        q = nn.functional.linear(query, wq, bq).view(shape_q).transpose(1, 2)  # (B, H', Nq, dh)
        k = nn.functional.linear(context, wk, bk).view(shape_k).transpose(1, 2)  # (B, H', Nk, dh)
        v = nn.functional.linear(context, wv, bv).view(shape_k).transpose(1, 2)  # (B, H', Nk, dh)
        scores = q @ k.transpose(-1, -2) * self.head_dim**-0.5  # (B, H', Nq, Nk)
        y = masked_attention_weights(scores, key_keep) @ v  # (B, H', Nq, dh)
        if head_mask is not None:
            y = y * head_mask[:, heads, None, None].to(y.dtype)  # (B, H', Nq, dh)
        y = y.transpose(1, 2).reshape(batch, n_q, n_h * self.head_dim)  # (B, Nq, H'*dh)
        return nn.functional.linear(y, wo, self.out.bias)  # (B, Nq, D)

    def macs(self, n_q: Count, n_k: Count, heads: Count) -> Count:
        """Multiply-accumulates of one sample with ``heads`` heads kept (what the flop counter sees).

        Arguments may be ints or integer tensors of per-sample counts.
        """
        width = heads * self.head_dim
        return (
            n_q * self.dim * width
            + 2 * n_k * self.dim * width
            + 2 * n_q * n_k * width
            + n_q * width * self.dim
        )
