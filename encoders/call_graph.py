"""One *call* of a compiled walk as an ``nn.Module``: consecutive exit steps, fused checks and the
exit test itself, in one graph that a backend (ONNX Runtime, or eager torch) runs at once.

A walk (``scheduler/program.py``) is a list of steps; a call is a run of consecutive steps. This
module builds the computation of one call from the CNN encoders and the exit grid, with the same
weights and the same arithmetic as their incremental ``start``/``step`` and ``fuse_exits``:

    inputs:  x_<m>  (B, C, H, W)   raw input of a modality whose first step is in this call
             h_<m>  (B, C_i, H_i, W_i) hidden map of a modality an earlier call left unfinished
             e_<m>  (B, D)         embedding of a modality's latest exit from an earlier call
             thr    (S,) float64   threshold of each step (+inf / -inf: the step always passes)
    outputs: first  (B,) int64     index of the first step that passes, -1 if none does
             pred   (B,) int64     the class of that step (of the last step when none passes)
             scores (B, S) float64 every step's score (normalised entropy or max probability)
             out_h_<m>, out_e_<m>  what later calls need (their h_<m>, e_<m>)

Two changes make the graph exportable and cheap, both exact in real arithmetic: an exit head's
adaptive average pool is a fixed (H*W, p*p) averaging matrix (the legacy ONNX exporter refuses
adaptive pooling whose output does not divide the input), and the score is computed in float64
from the float32 softmax, as the policy computes it in Python (``scheduler.rules.entropy_of``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import nn

from exitflow.encoders.cnn import CNNEarlyExitEncoder, ExitHead
from exitflow.encoders.fusion_grid import ExitGridFusion, grid_key

ENTROPY_FLOOR = 1e-12  # probabilities below this add nothing to the entropy (scheduler.rules.entropy_of)


class StepLike(Protocol):
    """A walk step (``scheduler.program.Step``): ``kind`` exit/check/final and its ``exits``."""

    @property
    def kind(self) -> str: ...

    @property
    def exits(self) -> tuple[tuple[str, int], ...]: ...


def pool_matrix(height: int, width: int, pool: int) -> torch.Tensor:
    """(H*W, pool*pool) matrix ``P`` with ``x.flatten(2) @ P == adaptive_avg_pool2d(x, pool).flatten(2)``."""
    matrix = torch.zeros(height * width, pool * pool)
    for i in range(pool):
        r0, r1 = (i * height) // pool, math.ceil((i + 1) * height / pool)
        for j in range(pool):
            c0, c1 = (j * width) // pool, math.ceil((j + 1) * width / pool)
            weight = 1.0 / ((r1 - r0) * (c1 - c0))
            for r in range(r0, r1):
                matrix[r * width + c0 : r * width + c1, i * pool + j] = weight
    return matrix


class PooledHead(nn.Module):
    """An :class:`ExitHead` with its pool as a matrix product; returns (calibrated logits, embedding)."""

    def __init__(self, head: ExitHead, temperature: float, height: int, width: int, pool: int):
        super().__init__()
        self.classifier = head.classifier
        self.temperature = float(temperature)
        self.pool: torch.Tensor
        self.register_buffer("pool", pool_matrix(height, width, pool))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = torch.matmul(hidden.flatten(2), self.pool).flatten(1)  # (B, C * p * p)
        return self.classifier(embedding) / self.temperature, embedding  # (B, K), (B, D)


def map_shapes(encoder: CNNEarlyExitEncoder) -> list[tuple[int, int, int]]:
    """(C, H, W) of the hidden map after each block, from a dry run at the configured input size."""
    cfg = encoder.config
    with torch.no_grad():
        h = encoder.stem(torch.zeros(1, cfg.num_channels, cfg.input_size, cfg.input_size))
        shapes = []
        for block in encoder.blocks:
            h = block(h)
            shapes.append((int(h.shape[1]), int(h.shape[2]), int(h.shape[3])))
    return shapes


class CallGraph(nn.Module):
    """The steps of one call (see the module doc for inputs and outputs).

    Args:
        encoders: Modality -> CNN encoder with exits (eval mode; BatchNorm folded or not).
        fusion: The exit grid (its heads and placeholders fuse the checks and the final step).
        steps: The call's steps, in walk order.
        started: Modality -> the last exit an earlier call ran (absent: the modality starts here).
        rule: ``entropy`` or ``max_prob``.
        hidden_out: Modalities whose hidden map later calls continue from.
        embedding_out: Modalities whose latest embedding later calls fuse.
    """

    def __init__(
        self,
        encoders: Mapping[str, CNNEarlyExitEncoder],
        fusion: ExitGridFusion | None,
        steps: Sequence[StepLike],
        started: Mapping[str, int],
        rule: str,
        hidden_out: Sequence[str] = (),
        embedding_out: Sequence[str] = (),
    ):
        super().__init__()
        if rule not in ("entropy", "max_prob"):
            raise ValueError(f"a compiled call evaluates entropy or max_prob, got rule {rule!r}")
        if not steps:
            raise ValueError("a call needs at least one step")
        self.rule = rule
        self.steps = [(s.kind, tuple(s.exits)) for s in steps]
        n = len(self.steps)
        self.position_weight: torch.Tensor
        self.last_bonus: torch.Tensor
        self.register_buffer("position_weight", torch.arange(n, 0, -1, dtype=torch.float32))
        self.register_buffer("last_bonus", torch.tensor([0.0] * (n - 1) + [0.5]))
        self.encoders = nn.ModuleDict({m: enc for m, enc in encoders.items()})
        self.fusion = fusion
        self.num_classes = int(next(iter(encoders.values())).config.num_classes)
        self.started = dict(started)
        self.hidden_out, self.embedding_out = list(hidden_out), list(embedding_out)
        self.heads = nn.ModuleDict()
        shapes = {m: map_shapes(enc) for m, enc in encoders.items()}
        run_here: dict[str, list[int]] = {}
        for kind, exits in self.steps:
            if kind == "exit":
                m, j = exits[0]
                run_here.setdefault(m, []).append(j)
                c, h, w = shapes[m][j]
                head = encoders[m].heads[j]
                if not isinstance(head, ExitHead):
                    raise ValueError(f"{m} exit {j}: a compiled call needs the CNN family's ExitHead")
                self.heads[f"{m}{j}"] = PooledHead(
                    head, float(encoders[m].temperatures[j]), h, w, encoders[m].config.head_pool)
            elif fusion is None:
                raise ValueError("a call with a fused check or a final fusion needs the exit grid")
        # inputs, in order: raw inputs, hidden maps, embeddings (fused before this call runs them), thresholds
        self.input_names = [f"x_{m}" for m in run_here if m not in self.started]
        self.input_names += [f"h_{m}" for m in run_here if m in self.started]
        self.embedding_in: list[str] = []
        seen: set[str] = set()
        for kind, exits in self.steps:
            if kind == "exit":
                seen.add(exits[0][0])
                continue
            for m, _ in exits:
                if m not in seen and m not in self.embedding_in:
                    if m not in self.started:
                        raise ValueError(f"step {kind} fuses {m}, which neither this call nor an earlier one ran")
                    self.embedding_in.append(m)
        unknown = sorted(set(self.embedding_out) - set(run_here)) + sorted(set(self.hidden_out) - set(run_here))
        if unknown:
            raise ValueError(f"a call outputs only what it runs; it does not run {unknown}")
        self.input_names += [f"e_{m}" for m in self.embedding_in] + ["thr"]
        # outputs carried to later calls are named out_h_<m> / out_e_<m> (an ONNX graph's input and
        # output names must differ; the next call takes them as h_<m> / e_<m>)
        self.output_names = ["first", "pred", "scores"] + [f"out_h_{m}" for m in self.hidden_out]
        self.output_names += [f"out_e_{m}" for m in self.embedding_out]

    def _fuse(self, exits: tuple[tuple[str, int], ...], embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        fusion = self.fusion
        if fusion is None:
            raise ValueError("no exit grid")
        chosen = dict(exits)
        if fusion.passthrough:
            raise ValueError("a one-modality grid fuses nothing: its final step is the exit's own logits")
        batch = embeddings[exits[0][0]].shape[0]
        full, parts = {}, []
        for m in fusion.modalities:
            if m in chosen:
                full[m] = chosen[m]
                parts.append(embeddings[m])  # (B, D_m)
            else:
                full[m] = len(fusion.dims[m]) - 1
                parts.append(fusion.placeholders[m].expand(batch, -1))  # (B, D_m)
        key = grid_key(full, fusion.modalities)
        logits = fusion.heads[key](torch.cat(parts, dim=-1))  # (B, C)
        return logits / fusion.temperatures[fusion._index[key]]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs, strict=True))
        hidden = {n[2:]: v for n, v in named.items() if n.startswith("h_")}
        embeddings = {n[2:]: v for n, v in named.items() if n.startswith("e_")}
        layer = {m: j + 1 for m, j in self.started.items()}
        for n, x in named.items():
            if n.startswith("x_"):
                m = n[2:]
                hidden[m] = self.encoders[m].stem(x)  # (B, C0, H/s, W/s)
                layer[m] = 0
        step_logits = []
        last_logits: dict[str, torch.Tensor] = {}
        for kind, exits in self.steps:
            if kind == "exit":
                m, j = exits[0]
                for block in self.encoders[m].blocks[layer[m] : j + 1]:  # blocks of exits left out run too
                    hidden[m] = block(hidden[m])  # (B, C_j, H_j, W_j)
                layer[m] = j + 1
                logits, embeddings[m] = self.heads[f"{m}{j}"](hidden[m])
                last_logits[m] = logits
            elif self.fusion is not None and self.fusion.passthrough:
                logits = last_logits[exits[0][0]]  # one modality: its exit's own logits
            else:
                logits = self._fuse(exits, embeddings)
            step_logits.append(logits)
        # every step's score at once (a handful of graph nodes, not a handful per step)
        stacked = torch.stack(step_logits, dim=1)  # (B, S, K)
        probs = torch.softmax(stacked, dim=-1).double()  # float32 softmax, float64 score (as the policy's)
        if self.rule == "entropy":
            entropy = -(probs * torch.log(torch.clamp(probs, min=ENTROPY_FLOOR))).sum(dim=-1)
            score_mat = entropy / math.log(self.num_classes)  # (B, S)
        else:
            score_mat = probs.max(dim=-1).values  # (B, S)
        thr = named["thr"].unsqueeze(0)  # (1, S)
        passed = score_mat <= thr if self.rule == "entropy" else score_mat >= thr  # (B, S)
        # the first passing step: a passing step weighs S, S-1, ..., 1 by position and the last step gets
        # 0.5 more, so it stands in (its class is the answer) when none passes
        rank = passed.to(torch.float32) * self.position_weight + self.last_bonus  # (B, S)
        pick = torch.argmax(rank, dim=1)  # (B,)
        any_pass = passed.any(dim=1)
        pred = torch.argmax(stacked, dim=-1).gather(1, pick.unsqueeze(1)).squeeze(1)  # (B,)
        first = torch.where(any_pass, pick, torch.full_like(pick, -1))
        outs = [first, pred, score_mat] + [hidden[m] for m in self.hidden_out]
        return tuple(outs + [embeddings[m] for m in self.embedding_out])
