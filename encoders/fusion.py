"""Adaptive cross-modal fusion: a co-attention transformer with MuE exits and SmartTrim trimming.

Each present modality arrives as the token states its encoder produced at the layer where it
stopped, ``(B, N_m, D_m)`` with an optional ``(B, N_m)`` validity mask. Fusion projects every
stream to a common width D, adds a modality embedding, prepends a learned fusion CLS token per
modality (so fusion does not depend on the encoder having one) and runs L co-attention layers.
In every layer each stream does self-attention over its own tokens, cross-attention to the
concatenated tokens of the other present modalities (their previous-layer states: the streams
update in lock-step) and a feed-forward block. The classifier (LayerNorm + Linear) reads the
mean of the per-modality CLS tokens; the same classifier reads every layer, which is what
MuE's layer-averaged training loss needs and what makes any stopping point predict.

MuE (modality decomposition): every stream is its own path, so it can stop at its own layer.
After a stream runs layer l for a sample, ``cos(h_l, h_{l-1})`` over that sample's kept tokens
is compared with the stream's threshold; when it passes, that stream stops being updated for
that sample and keeps serving its last state as cross-attention context to the streams still
running. Only the rows (samples) still running a stream are fed to its layer, so with a batch
of one an exited stream really costs nothing.

SmartTrim: before each layer a token trimmer per stream drops tokens (cumulatively: a dropped
token never returns; the fusion CLS tokens are always kept) and head trimmers pick the heads of
each self- and cross-attention. Training uses straight-through Gumbel-sigmoid masks over the
full tensors; inference (``hard``) gathers the kept tokens and slices the kept heads'
projections, so the multiply-accumulates really fall. ``macs`` reports per-sample counts from
the sizes that ran, equal to what ``torch.utils.flop_counter`` measures for a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from exitflow.encoders import exit_rules
from exitflow.encoders.trim import (
    Count,
    HeadMaskMode,
    HeadSlicedAttention,
    HeadTrimmer,
    TokenScoreMode,
    TokenTrimmer,
    compact_tokens,
    gumbel_sigmoid,
)


class FusionInputError(ValueError):
    """Fusion was given tokens of the wrong modality, rank, width or batch size."""


@dataclass(frozen=True)
class FusionTransformerConfig:
    """Shape and switches of the fusion transformer.

    Attributes:
        modality_dims: Token width D_m of each modality's encoder, e.g. {"image": 192}.
        num_classes: Classes of the classifier on the fused CLS tokens.
        dim: Common fusion width D.
        num_layers: Co-attention layers L.
        num_heads: Heads per attention module.
        ffn_mult: Feed-forward hidden width as a multiple of D.
        trim_tokens: Insert token trimmers.
        trim_heads: Insert head trimmers.
        token_score_mode: ``"cross"`` (local + bilinear global score) or ``"local"``.
        head_mask_mode: ``"learned"`` or ``"random"``.
        score_dim: Width D' of the token trimmer's projected features.
        gumbel_tau: Gumbel-sigmoid temperature in training.
        exit_embedding_token: :meth:`FusionTransformer.fuse_exits` puts each encoder's pooled exit
            embedding in front of its tokens (see :func:`exit_tokens`).
    """

    modality_dims: dict[str, int]
    num_classes: int = 10
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_mult: int = 2
    trim_tokens: bool = True
    trim_heads: bool = True
    token_score_mode: TokenScoreMode = "cross"
    head_mask_mode: HeadMaskMode = "learned"
    score_dim: int = 32
    gumbel_tau: float = 1.0
    exit_embedding_token: bool = False


def exit_tokens(output: Any, with_embedding: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The token sequence fusion reads from one encoder's ``ExitOutput``, and its validity mask.

    ``hidden`` (B, N, D) as it is, or with the exit head's pooled ``embedding`` (B, D) in front
    (``with_embedding``): the feature the encoder's own exit classified, so fusion starts from at
    least what a concatenation of pooled features would see.
    """
    hidden, mask = output.hidden, output.attention_mask
    if not with_embedding:
        return hidden, mask
    emb = output.embedding
    if emb.shape[-1] != hidden.shape[-1]:
        raise FusionInputError(
            f"exit embedding width {emb.shape[-1]} differs from the token width {hidden.shape[-1]}; "
            "set exit_embedding_token=False for this encoder"
        )
    tokens = torch.cat([emb.unsqueeze(1).to(hidden.dtype), hidden], dim=1)  # (B, 1 + N, D)
    if mask is None:
        return tokens, None
    return tokens, torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (B, 1 + N)


@dataclass
class FusionOutput:
    """What one fusion pass produced for a batch.

    Attributes:
        logits: (B, C) classifier output on the final fused CLS.
        per_layer_logits: L tensors (B, C), the classifier on each layer's fused CLS (a sample's
            exited streams contribute their frozen state); empty unless requested.
        exit_layers: Per modality, (B,) number of fusion layers that stream ran per sample.
        kept_token_ratio: (B,) tokens processed / tokens before trimming, over the layers run.
        kept_head_ratio: (B,) heads computed / heads available, over the attention modules run.
        macs: (B,) multiply-accumulates per sample (projections, trimmers, layers, classifier).
        hidden: Per modality, final token states (B, N', D) (fusion CLS first).
        keep: Per modality, (B, N') keep mask of ``hidden``.
        token_ratios: Per token-trimmer module, (B,) cumulative kept ratio (cost loss input).
        head_ratios: Per head-trimmer module, (B,) kept head ratio (cost loss input).
        similarity: Per modality, (B, L) cosine of each layer's output to its input, NaN where
            the stream did not run that layer (for calibrating thresholds from one full pass).
    """

    logits: torch.Tensor
    per_layer_logits: list[torch.Tensor]
    exit_layers: dict[str, torch.Tensor]
    kept_token_ratio: torch.Tensor
    kept_head_ratio: torch.Tensor
    macs: torch.Tensor
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)
    keep: dict[str, torch.Tensor] = field(default_factory=dict)
    token_ratios: list[torch.Tensor] = field(default_factory=list)
    head_ratios: list[torch.Tensor] = field(default_factory=list)
    similarity: dict[str, torch.Tensor] = field(default_factory=dict)


def cosine_to_previous(
    h: torch.Tensor, h_prev: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample cosine similarity of two token-state tensors over their kept tokens.

    The MuE rule of ``encoders.exit_rules`` with trimmed and padding tokens zeroed first.

    Args:
        h: (B, N, D) states after a layer.
        h_prev: (B, N, D) states before it.
        keep: (B, N) mask of tokens that count, or None for all.

    Returns:
        (B,) cosine similarity of the flattened kept token states.
    """
    if keep is not None:
        w = keep.unsqueeze(-1).to(h.dtype)  # (B, N, 1)
        h, h_prev = h * w, h_prev * w
    return exit_rules.cosine_to_previous(h, h_prev)  # (B,)


class CoAttentionBlock(nn.Module):
    """One fusion layer of one modality stream: self-attention, cross-attention, feed-forward."""

    def __init__(self, dim: int, num_heads: int, ffn_mult: int):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = HeadSlicedAttention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.cross_attn = HeadSlicedAttention(dim, num_heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        self.ffn_hidden = ffn_mult * dim

    def forward(
        self,
        x: torch.Tensor,
        keep: torch.Tensor,
        context: torch.Tensor | None,
        context_keep: torch.Tensor | None,
        head_self: torch.Tensor | None,
        head_cross: torch.Tensor | None,
        hard: bool,
    ) -> torch.Tensor:
        """(B, N, D) stream states -> (B, N, D); ``context`` (B, M, D) is the other modalities."""
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, keep, head_self, hard)  # (B, N, D)
        if context is not None and context_keep is not None:
            x = x + self.cross_attn(
                self.norm_cross(x), self.norm_ctx(context), context_keep, head_cross, hard
            )
        return x + self.ffn(self.norm_ffn(x))  # (B, N, D)

    def macs(self, n: Count, n_ctx: Count, heads_self: Count, heads_cross: Count, has_context: bool) -> Count:
        """Per-sample MACs with ``n`` stream tokens, ``n_ctx`` context tokens and the kept heads."""
        total = self.self_attn.macs(n, n, heads_self) + 2 * n * self.self_attn.dim * self.ffn_hidden
        if has_context:
            total = total + self.cross_attn.macs(n, n_ctx, heads_cross)
        return total


class FusionTransformer(nn.Module):
    """Co-attention fusion over any subset of modalities, with MuE exits and SmartTrim trimmers.

    Args:
        config: Widths, depth and trimming switches.

    Attributes:
        exit_thresholds: Per-modality MuE cosine thresholds used by :meth:`fuse` (a modality
            missing here never exits early); set from the config by the caller.
        trim_at_inference: Whether :meth:`fuse` runs the trimmers (hard masks); False runs the
            same weights untrimmed (on a CPU at small width that can be the faster choice).
    """

    def __init__(self, config: FusionTransformerConfig):
        super().__init__()
        if not config.modality_dims:
            raise ValueError("FusionTransformerConfig.modality_dims is empty; give e.g. {'image': 192}")
        self.config = config
        self.modalities = tuple(config.modality_dims)
        dim, heads = config.dim, config.num_heads
        self.input_proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in config.modality_dims.items()})
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in self.modalities})
        self.cls_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in self.modalities})
        for m in self.modalities:
            nn.init.normal_(self.modality_embed[m], std=0.02)
            nn.init.normal_(self.cls_token[m], std=0.02)
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: CoAttentionBlock(dim, heads, config.ffn_mult) for m in self.modalities})
            for _ in range(config.num_layers)
        )
        self.token_trimmers = nn.ModuleList(
            nn.ModuleDict(
                {m: TokenTrimmer(dim, config.score_dim, config.token_score_mode) for m in self.modalities}
            )
            for _ in range(config.num_layers if config.trim_tokens else 0)
        )
        self.head_trimmers = nn.ModuleList(
            nn.ModuleDict(
                {
                    f"{m}/{kind}": HeadTrimmer(dim, heads, kind == "cross", config.head_mask_mode)
                    for m in self.modalities
                    for kind in ("self", "cross")
                }
            )
            for _ in range(config.num_layers if config.trim_heads else 0)
        )
        self.head_norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, config.num_classes)
        self.exit_thresholds: dict[str, float] = {}
        self.trim_at_inference = True  # fuse() with the trimmers on (False: same weights, full model)
        self.macs = 0.0  # mean MACs per fused sample, as measured on validation data (0 = not measured)

    def configure_inference(
        self, exit_thresholds: dict[str, float], trim: bool = True, macs_per_sample: float = 0.0
    ) -> None:
        """How :meth:`fuse` runs: MuE thresholds per modality, trimmers on or off, its measured mean MACs."""
        if any(not 0.0 <= float(v) <= 1.0 for v in exit_thresholds.values()):
            raise ValueError(f"MuE thresholds are cosine similarities in [0, 1], got {exit_thresholds}")
        self.exit_thresholds = {m: float(v) for m, v in exit_thresholds.items()}
        self.trim_at_inference = bool(trim)
        self.macs = float(macs_per_sample)

    def set_head_target(self, target: float) -> None:
        """Kept-head ratio of random head masks (the ablation baseline); learned masks ignore it."""
        for layer in self.head_trimmers:
            for trimmer in cast(nn.ModuleDict, layer).values():
                cast(HeadTrimmer, trimmer).target = float(target)

    def classify(self, cls_tokens: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B, C) from the per-modality CLS tokens, each (B, D)."""
        fused = torch.stack(cls_tokens, dim=0).mean(dim=0)  # (B, D)
        return self.classifier(self.head_norm(fused))  # (B, C)

    def _validate(
        self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None] | None
    ) -> tuple[list[str], int]:
        if not tokens:
            raise FusionInputError("fusion needs at least one modality's tokens; got an empty dict")
        present = [m for m in self.modalities if m in tokens]
        unknown = sorted(set(tokens) - set(self.modalities))
        if unknown:
            raise FusionInputError(f"unknown modalities {unknown}; this fusion knows {list(self.modalities)}")
        batch = None
        for m in present:
            t = tokens[m]
            want = self.config.modality_dims[m]
            if t.dim() != 3 or t.shape[-1] != want:
                raise FusionInputError(f"{m} tokens: expected (B, N, {want}), got {tuple(t.shape)}")
            if batch is not None and t.shape[0] != batch:
                raise FusionInputError(
                    f"{m} tokens: batch {t.shape[0]} differs from {batch}; align the batch"
                )
            batch = t.shape[0]
            mask = (masks or {}).get(m)
            if mask is not None and tuple(mask.shape) != tuple(t.shape[:2]):
                raise FusionInputError(f"{m} mask: expected {tuple(t.shape[:2])}, got {tuple(mask.shape)}")
        return present, int(batch or 0)

    def _embed(
        self, m: str, x: torch.Tensor, mask: torch.Tensor | None, hard: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project one stream and prepend its CLS; returns states, keep mask and input MACs (B,)."""
        valid = torch.ones(x.shape[:2], device=x.device) if mask is None else (mask > 0).float()  # (B, N)
        if hard and mask is not None:
            x, valid = compact_tokens(x, valid)  # padding is never projected
        proj = cast(nn.Linear, self.input_proj[m])
        h = proj(x) + self.modality_embed[m]  # (B, N, D)
        cls = self.cls_token[m].expand(x.shape[0], 1, -1)  # (B, 1, D)
        h = torch.cat([cls, h], dim=1)  # (B, 1 + N, D)
        keep = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # (B, 1 + N)
        macs = valid.sum(dim=1).long() * proj.in_features * proj.out_features  # (B,)
        return h, keep, macs

    def forward(
        self,
        tokens: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor | None] | None = None,
        thresholds: dict[str, float] | None = None,
        trim: bool = True,
        hard: bool | None = None,
        all_layer_logits: bool | None = None,
    ) -> FusionOutput:
        """Fuse the present modalities' token states.

        Args:
            tokens: Modality -> (B, N_m, D_m) encoder token states (any subset of modalities).
            masks: Modality -> (B, N_m) validity mask (1 = real token), or None.
            thresholds: Modality -> MuE cosine threshold; None (or a missing modality, or a
                value above 1) means that stream runs every layer.
            trim: Apply the SmartTrim trimmers (False runs the full model).
            hard: Use 0/1 masks that really remove tokens and heads; default ``not training``.
            all_layer_logits: Return the classifier on every layer; default ``training``.

        Returns:
            A :class:`FusionOutput`.
        """
        present, batch = self._validate(tokens, masks)
        hard = (not self.training) if hard is None else hard
        all_layer_logits = self.training if all_layer_logits is None else all_layer_logits
        stochastic = self.training and not hard
        thresholds = thresholds or {}
        cfg, device = self.config, tokens[present[0]].device
        h: dict[str, torch.Tensor] = {}
        keep: dict[str, torch.Tensor] = {}
        macs = torch.zeros(batch, dtype=torch.long, device=device)
        for m in present:
            h[m], keep[m], input_macs = self._embed(m, tokens[m], (masks or {}).get(m), hard)
            macs = macs + input_macs
        valid_count = {m: keep[m].sum(dim=1) for m in present}  # (B,) tokens before trimming
        active = {m: torch.ones(batch, dtype=torch.bool, device=device) for m in present}
        exit_layers = {m: torch.zeros(batch, dtype=torch.long, device=device) for m in present}
        similarity = {m: torch.full((batch, cfg.num_layers), float("nan"), device=device) for m in present}
        tokens_kept = torch.zeros(batch, device=device)
        tokens_total = torch.zeros(batch, device=device)
        heads_kept = torch.zeros(batch, device=device)
        heads_total = torch.zeros(batch, device=device)
        token_ratios: list[torch.Tensor] = []
        head_ratios: list[torch.Tensor] = []
        per_layer: list[torch.Tensor] = []
        use_tokens = trim and cfg.trim_tokens
        use_heads = trim and cfg.trim_heads
        for layer_idx, blocks in enumerate(self.layers):
            rows = {m: torch.nonzero(active[m]).flatten() for m in present}
            if all(r.numel() == 0 for r in rows.values()):
                break
            cls_all = {m: h[m][:, 0] for m in present}  # (B, D) each
            cls_other = {m: self._other_cls(cls_all, m, present) for m in present}
            # 1. token trimming (cumulative), then really drop tokens when hard
            if use_tokens:
                for m in present:
                    r = rows[m]
                    if r.numel() == 0:
                        continue
                    token_trimmer = cast(TokenTrimmer, cast(nn.ModuleDict, self.token_trimmers[layer_idx])[m])
                    macs = macs.index_add(
                        0, r, torch.as_tensor(token_trimmer.macs(keep[m][r].sum(dim=1).long()))
                    )
                    logits = token_trimmer(h[m][r], cls_all[m][r], cls_other[m][r])  # (R, N)
                    mask = gumbel_sigmoid(logits, cfg.gumbel_tau, training=stochastic)  # (R, N)
                    mask = torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)  # CLS always kept
                    keep[m] = keep[m].index_copy(0, r, keep[m][r] * mask)
                    token_ratios.append(keep[m].sum(dim=1) / valid_count[m])  # (B,)
                if hard:
                    for m in present:
                        h[m], keep[m] = compact_tokens(h[m], keep[m])
            # 2. head masks and the blocks, all from the previous layer's states
            updates: dict[str, torch.Tensor] = {}
            for m in present:
                r = rows[m]
                if r.numel() == 0:
                    continue
                others = [o for o in present if o != m]
                ctx = torch.cat([h[o][r] for o in others], dim=1) if others else None  # (R, M, D)
                ctx_keep = torch.cat([keep[o][r] for o in others], dim=1) if others else None  # (R, M)
                head_masks: dict[str, torch.Tensor | None] = {"self": None, "cross": None}
                n_heads = {
                    k: torch.full((r.numel(),), float(cfg.num_heads), device=device) for k in head_masks
                }
                if use_heads:
                    for kind in ("self", "cross") if others else ("self",):
                        head_trimmer = cast(
                            HeadTrimmer, cast(nn.ModuleDict, self.head_trimmers[layer_idx])[f"{m}/{kind}"]
                        )
                        logits = head_trimmer(cls_all[m][r], cls_other[m][r])  # (R, H)
                        head_mask = gumbel_sigmoid(logits, cfg.gumbel_tau, training=stochastic)  # (R, H)
                        head_masks[kind] = head_mask
                        n_heads[kind] = head_mask.sum(dim=1)  # (R,)
                        macs = macs.index_add(0, r, torch.full_like(r, head_trimmer.macs()))
                        ratio = torch.ones(batch, device=device).index_copy(
                            0, r, n_heads[kind] / cfg.num_heads
                        )
                        head_ratios.append(ratio)  # (B,)
                n_tok = keep[m][r].sum(dim=1)  # (R,)
                n_ctx = ctx_keep.sum(dim=1) if ctx_keep is not None else torch.zeros_like(n_tok)  # (R,)
                block = cast(CoAttentionBlock, cast(nn.ModuleDict, blocks)[m])
                y = block(h[m][r], keep[m][r], ctx, ctx_keep, head_masks["self"], head_masks["cross"], hard)
                block_macs = block.macs(
                    n_tok.long(), n_ctx.long(), n_heads["self"].long(), n_heads["cross"].long(), bool(others)
                )
                macs = macs.index_add(0, r, torch.as_tensor(block_macs))
                modules = 2 if others else 1
                tokens_kept = tokens_kept.index_add(0, r, n_tok.detach())
                tokens_total = tokens_total.index_add(0, r, valid_count[m][r])
                heads_kept = heads_kept.index_add(
                    0, r, (n_heads["self"] + (n_heads["cross"] if others else 0)).detach()
                )
                heads_total = heads_total.index_add(0, r, torch.full_like(n_tok, modules * cfg.num_heads))
                updates[m] = y
            for m, y in updates.items():
                r = rows[m]
                exit_layers[m] = exit_layers[m].index_fill(0, r, layer_idx + 1)
                with torch.no_grad():
                    sim = cosine_to_previous(y, h[m][r], keep[m][r])  # (R,)
                similarity[m][r, layer_idx] = sim
                theta = thresholds.get(m)
                if theta is not None and theta <= 1.0:
                    active[m] = active[m].index_fill(0, r[sim >= theta], False)
                h[m] = h[m].index_copy(0, r, y)
            if all_layer_logits:
                per_layer.append(self.classify([h[m][:, 0] for m in present]))
        logits = self.classify([h[m][:, 0] for m in present])  # (B, C)
        macs = macs + self.classifier.in_features * self.classifier.out_features
        return FusionOutput(
            logits=logits,
            per_layer_logits=per_layer,
            exit_layers=exit_layers,
            kept_token_ratio=tokens_kept / tokens_total.clamp_min(1),
            kept_head_ratio=heads_kept / heads_total.clamp_min(1),
            macs=macs,
            hidden=h,
            keep=keep,
            token_ratios=token_ratios,
            head_ratios=head_ratios,
            similarity=similarity,
        )

    @staticmethod
    def _other_cls(cls_all: dict[str, torch.Tensor], m: str, present: list[str]) -> torch.Tensor:
        others = [cls_all[o] for o in present if o != m]
        if not others:
            return torch.zeros_like(cls_all[m])  # (B, D)
        return torch.stack(others, dim=0).mean(dim=0)  # (B, D)

    @torch.no_grad()
    def fuse(
        self, hidden: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None] | None = None
    ) -> FusionOutput:
        """The engine's entry point: inference with hard masks and ``exit_thresholds``.

        Args:
            hidden: Modality -> (B, N_m, D_m) token states (``ExitOutput.hidden``) of the
                modalities that ran; modalities that were skipped are simply absent.
            masks: Modality -> (B, N_m) validity masks (``ExitOutput.attention_mask``).
        """
        return self.forward(
            hidden, masks, thresholds=self.exit_thresholds, trim=self.trim_at_inference, hard=True,
            all_layer_logits=False,
        )

    def fuse_exits(self, outputs: dict) -> FusionOutput:
        """:meth:`fuse` over ``{modality: ExitOutput}`` as the encoders return them (see :func:`exit_tokens`)."""
        pairs = {m: exit_tokens(o, self.config.exit_embedding_token) for m, o in outputs.items()}
        return self.fuse({m: t for m, (t, _) in pairs.items()}, {m: k for m, (_, k) in pairs.items()})
