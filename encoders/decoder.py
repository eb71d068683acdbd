"""Autoregressive decoder head over fused tokens, with MuE per-step similarity exits.

The decoder reads the fusion transformer's final token states of every present modality (the
*memory*, ``(B, M, D)`` with a keep mask) and emits a token sequence, one token per step. Each
layer is pre-norm causal self-attention, cross-attention to the memory and a feed-forward
block; one LayerNorm + Linear head reads every layer (training averages the loss over layers,
as MuE does, so any layer can emit).

At generation step t (0-based) a sample's token leaves the stack after layer i when the cosine
similarity of its state after layer i to its state before it reaches the decaying threshold
``Theta(t) = beta * theta + (1 - beta) * exp(-tau * t / N)`` (N = ``max_len + 1``, as in MuE's
release), except during the warm-up: no exits in the first ``warmup_fraction`` of the N steps.
The threshold starts near 1 (hard to exit) and decays toward ``beta * theta``, so later tokens,
which depend more on what was already decoded, may leave earlier.

Caches of skipped layers: later tokens attend to the keys/values of every earlier position in
every layer, so a layer that a token skipped still needs an entry for it. exitflow copies the
exiting hidden state up: each skipped layer computes its key and value from the state the token
left with (2 D x D MACs per skipped layer, counted in ``macs``), as if that state were the
layer's input. This keeps every layer's cache complete with one projection, instead of running
the skipped layers or attending to a hole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from exitflow.encoders.fusion import cosine_to_previous
from exitflow.encoders.trim import masked_attention_weights


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of the exiting decoder.

    Attributes:
        vocab_size: Output vocabulary size (specials included).
        dim: Width D; the memory must have this width too.
        num_layers: Decoder layers.
        num_heads: Attention heads.
        ffn_mult: Feed-forward hidden width as a multiple of D.
        max_len: Steps generated (tokens after BOS).
        bos_id: Token that starts every sequence.
    """

    vocab_size: int
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_mult: int = 2
    max_len: int = 7
    bos_id: int = 1


def decaying_threshold(t: int, num_steps: int, theta: float, beta: float, tau: float) -> float:
    """MuE's decoder exit threshold at step ``t``: ``beta*theta + (1-beta)*exp(-tau*t/num_steps)``."""
    if num_steps <= 0:
        raise ValueError(f"decaying_threshold: num_steps must be > 0, got {num_steps}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"decaying_threshold: beta must be in [0, 1], got {beta}")
    return beta * theta + (1.0 - beta) * math.exp(-tau * t / num_steps)


@dataclass
class DecodeOutput:
    """Result of :meth:`ExitingDecoder.generate`.

    Attributes:
        tokens: (B, T) emitted token ids.
        logits: (B, T, V) scores each step emitted from.
        layers: (B, T) decoder layers each step ran (1..num_layers).
        thresholds: T thresholds in force per step (inf during warm-up or with exits off).
        macs: (B,) multiply-accumulates per sample (memory projections included).
        similarity: (B, T, num_layers) cosine of each layer's output to its input for the
            step's token, NaN where the layer did not run.
    """

    tokens: torch.Tensor
    logits: torch.Tensor
    layers: torch.Tensor
    thresholds: list[float]
    macs: torch.Tensor
    similarity: torch.Tensor


class DecoderLayer(nn.Module):
    """Causal self-attention with a key/value cache, cross-attention to memory, feed-forward."""

    def __init__(self, dim: int, num_heads: int, ffn_mult: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"DecoderLayer: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.norm_self = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_cross = nn.LayerNorm(dim)
        self.cq, self.ck, self.cv, self.co = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn_hidden = ffn_mult * dim
        self.ffn = nn.Sequential(nn.Linear(dim, self.ffn_hidden), nn.GELU(), nn.Linear(self.ffn_hidden, dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, dh)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.dim)  # (B, T, D)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the memory, (B, H, M, dh) each; computed once per sequence."""
        return self._split(self.ck(memory)), self._split(self.cv(memory))

    def self_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention keys and values of layer inputs ``x`` (B, T, D): (B, H, T, dh) each."""
        h = self.norm_self(x)
        return self._split(self.k(h)), self._split(self.v(h))

    def forward(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        memory_keep: torch.Tensor,
        causal: bool,
    ) -> torch.Tensor:
        """Run the layer on queries ``x`` (B, T, D) given self keys/values (B, H, S, dh).

        With ``causal`` (teacher forcing, S == T) query i sees keys 0..i; otherwise every key
        (one generation step whose cache ends at the current position).
        """
        q = self._split(self.q(self.norm_self(x)))  # (B, H, T, dh)
        scores = q @ keys.transpose(-1, -2) * self.head_dim**-0.5  # (B, H, T, S)
        if causal:
            future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        x = x + self.o(self._merge(torch.softmax(scores, dim=-1) @ values))  # (B, T, D)
        cq = self._split(self.cq(self.norm_cross(x)))  # (B, H, T, dh)
        mem_k, mem_v = memory_kv
        weights = masked_attention_weights(cq @ mem_k.transpose(-1, -2) * self.head_dim**-0.5, memory_keep)
        x = x + self.co(self._merge(weights @ mem_v))  # (B, T, D)
        return x + self.ffn(self.norm_ffn(x))  # (B, T, D)

    def step_macs(self, n_keys: int, n_memory: torch.Tensor) -> torch.Tensor:
        """Per-sample MACs of one generation step through this layer (cache write included)."""
        d = self.dim
        self_attn = 4 * d * d + 2 * n_keys * d
        cross = 2 * d * d + 2 * n_memory * d
        ffn = 2 * d * self.ffn_hidden
        return self_attn + cross + ffn


class ExitingDecoder(nn.Module):
    """Transformer decoder whose every layer can emit, with per-sample MuE exits in generation.

    Args:
        config: Vocabulary and shape.
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.pos = nn.Parameter(torch.zeros(config.max_len + 1, config.dim))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(
            DecoderLayer(config.dim, config.num_heads, config.ffn_mult) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size)

    @property
    def blocks(self) -> list[DecoderLayer]:
        """The decoder layers, typed."""
        return cast(list[DecoderLayer], list(self.layers))

    def _check_memory(self, memory: torch.Tensor, memory_keep: torch.Tensor | None) -> torch.Tensor:
        if memory.dim() != 3 or memory.shape[-1] != self.config.dim:
            raise ValueError(f"decoder memory: expected (B, M, {self.config.dim}), got {tuple(memory.shape)}")
        if memory_keep is None:
            return torch.ones(memory.shape[:2], device=memory.device)
        if memory_keep.shape != memory.shape[:2]:
            raise ValueError(
                f"decoder memory_keep: expected {tuple(memory.shape[:2])}, got {tuple(memory_keep.shape)}"
            )
        return memory_keep

    def forward(
        self, inputs: torch.Tensor, memory: torch.Tensor, memory_keep: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Teacher forcing: logits of every layer for next-token prediction.

        Args:
            inputs: (B, T) token ids (BOS first), T <= max_len + 1.
            memory: (B, M, D) fused tokens.
            memory_keep: (B, M) keep mask of the memory, or None.

        Returns:
            num_layers tensors (B, T, V): the shared head applied after each layer.
        """
        memory_keep = self._check_memory(memory, memory_keep)
        if inputs.shape[1] > self.pos.shape[0]:
            raise ValueError(
                f"decoder inputs: length {inputs.shape[1]} exceeds max_len + 1 = {self.pos.shape[0]}"
            )
        x = self.embed(inputs) + self.pos[: inputs.shape[1]]  # (B, T, D)
        per_layer = []
        for layer in self.blocks:
            keys, values = layer.self_kv(x)
            x = layer(x, keys, values, layer.memory_kv(memory), memory_keep, causal=True)
            per_layer.append(self.head(self.norm(x)))  # (B, T, V)
        return per_layer

    @torch.no_grad()
    def generate(
        self,
        memory: torch.Tensor,
        memory_keep: torch.Tensor | None = None,
        theta: float | None = None,
        beta: float = 0.9,
        tau: float = 1.0,
        warmup_fraction: float = 1 / 3,
        forced_layers: torch.Tensor | None = None,
    ) -> DecodeOutput:
        """Greedy decoding of ``max_len`` steps with per-sample, per-step similarity exits.

        Args:
            memory: (B, M, D) fused tokens.
            memory_keep: (B, M) keep mask, or None.
            theta: Base similarity threshold; None disables exits (every step runs every layer).
            beta: Weight of ``theta`` in the decaying threshold.
            tau: Decay rate of the threshold.
            warmup_fraction: Share of the N = max_len + 1 steps at the start with no exits.
            forced_layers: (B, max_len) layer each step leaves after (1..num_layers), replacing
                the similarity rule; for oracle studies and tests.

        Returns:
            A :class:`DecodeOutput`.
        """
        memory_keep = self._check_memory(memory, memory_keep)
        cfg, batch, device = self.config, memory.shape[0], memory.device
        num_steps = cfg.max_len + 1
        mem_kv = [layer.memory_kv(memory) for layer in self.blocks]
        n_memory = memory_keep.sum(dim=1).long()  # (B,)
        macs = 2 * len(self.layers) * n_memory * cfg.dim * cfg.dim  # (B,) memory keys/values
        caches = [
            (
                torch.zeros(batch, cfg.num_heads, cfg.max_len, cfg.dim // cfg.num_heads, device=device),
                torch.zeros(batch, cfg.num_heads, cfg.max_len, cfg.dim // cfg.num_heads, device=device),
            )
            for _ in self.layers
        ]
        token = torch.full((batch,), cfg.bos_id, dtype=torch.long, device=device)
        tokens, step_logits, layers_run, thresholds = [], [], [], []
        similarity = torch.full((batch, cfg.max_len, len(self.layers)), float("nan"), device=device)
        for t in range(cfg.max_len):
            exits_on = theta is not None and t >= warmup_fraction * num_steps
            limit = float("inf")
            if theta is not None and exits_on:
                limit = decaying_threshold(t, num_steps, theta, beta, tau)
            thresholds.append(limit)
            x = self.embed(token)[:, None] + self.pos[t]  # (B, 1, D)
            active = torch.ones(batch, dtype=torch.bool, device=device)
            depth = torch.zeros(batch, dtype=torch.long, device=device)
            for j, layer in enumerate(self.blocks):
                rows = torch.nonzero(active).flatten()
                idle = torch.nonzero(~active).flatten()
                k_cache, v_cache = caches[j]
                if idle.numel():  # copy the exited state up: keys/values from the state it left with
                    k_new, v_new = layer.self_kv(x[idle])  # (I, H, 1, dh)
                    k_cache[idle, :, t : t + 1], v_cache[idle, :, t : t + 1] = k_new, v_new
                    macs[idle] += 2 * cfg.dim * cfg.dim
                if rows.numel() == 0:
                    continue
                x_in = x[rows]  # (R, 1, D)
                k_new, v_new = layer.self_kv(x_in)
                k_cache[rows, :, t : t + 1], v_cache[rows, :, t : t + 1] = k_new, v_new
                rows_kv = (mem_kv[j][0][rows], mem_kv[j][1][rows])
                y = layer(
                    x_in,
                    k_cache[rows, :, : t + 1],
                    v_cache[rows, :, : t + 1],
                    rows_kv,
                    memory_keep[rows],
                    False,
                )
                macs[rows] += layer.step_macs(t + 1, n_memory[rows])
                depth[rows] = j + 1
                x[rows] = y
                sim = cosine_to_previous(y, x_in)  # (R,)
                similarity[rows, t, j] = sim
                if forced_layers is not None:
                    active[rows[forced_layers[rows, t] <= j + 1]] = False
                elif exits_on and j < len(self.layers) - 1:
                    active[rows[sim >= limit]] = False
            logits = self.head(self.norm(x[:, 0]))  # (B, V)
            macs += cfg.dim * cfg.vocab_size
            token = logits.argmax(dim=-1)  # (B,)
            tokens.append(token)
            step_logits.append(logits)
            layers_run.append(depth)
        return DecodeOutput(
            tokens=torch.stack(tokens, dim=1),
            logits=torch.stack(step_logits, dim=1),
            layers=torch.stack(layers_run, dim=1),
            thresholds=thresholds,
            macs=macs,
            similarity=similarity,
        )
