"""One *call* of a compiled walk as an ``nn.Module``: consecutive exit steps, fused checks and the
exit test itself, in one graph that a backend (ONNX Runtime, or eager torch) runs at once.

A walk (``scheduler/program.py``) is a list of steps; a call is a run of consecutive steps. This
module builds the computation of one call from the CNN encoders and the exit grid, with the same
weights and the same arithmetic as their incremental ``start``/``step`` and ``fuse_exits``:

    inputs:  x_<m>  (B, C, H, W)   raw input of a modality whose first step is in this call
             h_<m>  (B, C_i, H_i, W_i) hidden map of a modality an earlier call left unfinished
             e_<m>  (B, D)         embedding of a modality's latest exit from an earlier call
             thr    (S,) float64   threshold of each scored step (+inf / -inf: the step always passes)
    outputs: pick   (B,) int64     index (among the scored steps) of the first that passes, else the last
                                   (left out when the call scores one step: it is that step)
             passed (B,) bool      whether a step passed
             preds  (B, S) int64   every scored step's class
             scores (B, S) float64 every scored step's score (normalised entropy or max probability; on request)
             out_h_<m>, out_e_<m>  what later calls need (their h_<m>, e_<m>)

Two changes make the graph exportable and cheap, both exact in real arithmetic: an exit head's
adaptive average pool is a fixed (H*W, p*p) averaging matrix (the legacy ONNX exporter refuses
adaptive pooling whose output does not divide the input), and the score is computed in float64
from the float32 softmax, as the policy computes it in Python (``scheduler.rules.entropy_of``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, cast

import torch
from torch import nn

from exitflow.encoders.cnn import CNNEarlyExitEncoder, ExitHead
from exitflow.encoders.fusion_grid import ExitGridFusion, grid_key

ENTROPY_FLOOR = 1e-12
STEP_USES = ("score", "logits", "embed", "skip")  # probabilities below this add nothing to the entropy (scheduler.rules.entropy_of)


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


def classifier_macs(encoder: CNNEarlyExitEncoder, exit_index: int) -> int:
    """Per-sample MACs of exit ``exit_index``'s classifier alone (its head minus the pool)."""
    linear = cast(ExitHead, encoder.heads[exit_index]).classifier
    return int(linear.in_features * linear.out_features)


def scaled_linear(linear: nn.Linear, temperature: float) -> nn.Linear:
    """A copy of ``linear`` whose outputs are divided by ``temperature`` (weights and bias scaled: one node
    fewer per exit than a division after it)."""
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(linear.weight / temperature)
        if linear.bias is not None:
            out.bias.copy_(linear.bias / temperature)
    return out


class PooledHead(nn.Module):
    """An :class:`ExitHead` with its pool as a matrix product; returns (calibrated logits, embedding).

    The map's shape is fixed here, so every reshape has constant shapes: the graph needs no Shape /
    Slice / Concat chain to find the batch size (each such node costs as much as the arithmetic of a
    small head at batch 1).
    """

    def __init__(self, head: ExitHead, temperature: float, channels: int, height: int, width: int, pool: int):
        super().__init__()
        self.classifier = scaled_linear(head.classifier, temperature)
        self.area, self.embed_dim = height * width, channels * pool * pool
        self.pool: torch.Tensor
        self.register_buffer("pool", pool_matrix(height, width, pool))

    def embed(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, self.area)  # (B * C, H * W)
        return torch.matmul(rows, self.pool).reshape(-1, self.embed_dim)  # (B, C * p * p)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(hidden)  # (B, D)
        return self.classifier(embedding), embedding  # (B, K) calibrated, (B, D)


class FusedHead(nn.Module):
    """The exit grid's head for one exit combination, calibrated, over the *present* modalities only.

    An absent modality enters the grid as a learned placeholder; its share of the first layer is a
    constant, folded into that layer's bias here (exact in real arithmetic), and the head's
    temperature is folded into its last layer: ``forward(embeddings)`` is one concat and three nodes.
    """

    def __init__(self, fusion: ExitGridFusion, exits: Mapping[str, int]):
        super().__init__()
        self.present = [m for m in fusion.modalities if m in exits]
        full = {m: exits.get(m, len(fusion.dims[m]) - 1) for m in fusion.modalities}
        key = grid_key(full, fusion.modalities)
        head = cast(nn.Sequential, fusion.heads[key])
        first, last = head[0], head[2]
        if not isinstance(first, nn.Linear) or not isinstance(last, nn.Linear):
            raise ValueError(f"grid head {key} is not Linear-ReLU-Linear")
        columns, bias, offset = [], first.bias.detach().clone(), 0
        with torch.no_grad():
            for m in fusion.modalities:
                width = fusion.dims[m][full[m]]
                block = first.weight[:, offset : offset + width]  # (H, D_m)
                if m in exits:
                    columns.append(block)
                else:
                    bias += block @ fusion.placeholders[m]
                offset += width
            self.first = nn.Linear(sum(c.shape[1] for c in columns), first.out_features)
            self.first.weight.copy_(torch.cat(columns, dim=1))
            self.first.bias.copy_(bias)
        self.last = scaled_linear(last, float(fusion.temperatures[fusion._index[key]]))

    def forward(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        joined = torch.cat(list(embeddings), dim=-1) if len(embeddings) > 1 else embeddings[0]  # (B, sum D_m)
        return self.last(torch.relu(self.first(joined)))  # (B, C) calibrated


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
        use: Per step, what of it runs: ``score`` (its exit test), ``logits`` (an exit's classifier, for a
            one-modality final step), ``embed`` (an exit's embedding only: a later fused step reads it),
            ``skip`` (nothing but an exit's blocks: a step whose threshold cannot pass and whose output
            nothing reads). None: every step scored. The last step is always scored.
        with_scores: Also output every scored step's score (the engine reads only pick/passed/preds).
        logits_out: Also output the last step's calibrated logits (B, C) as ``logits``: the program's final
            call, whose forced answer the last rung (:mod:`encoders.last_rung`) mixes with its own.
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
        use: Sequence[str] | None = None,
        with_scores: bool = True,
        logits_out: bool = False,
    ):
        super().__init__()
        use = list(use) if use is not None else ["score"] * len(steps)
        if len(use) != len(steps) or any(u not in STEP_USES for u in use) or use[-1] != "score":
            raise ValueError(f"use needs one of {STEP_USES} per step, the last one 'score'; got {use}")
        if rule not in ("entropy", "max_prob"):
            raise ValueError(f"a compiled call evaluates entropy or max_prob, got rule {rule!r}")
        if not steps:
            raise ValueError("a call needs at least one step")
        self.rule = rule
        self.steps = [(s.kind, tuple(s.exits)) for s in steps]
        self.use = use
        self.scored = [i for i, u in enumerate(use) if u == "score"]  # call-local positions of the scored steps
        n = len(self.scored)
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
        self.fused = nn.ModuleDict()  # the call's fused heads, by their order among its fusion steps
        self.fused_steps: list[int] = []
        shapes = {m: map_shapes(enc) for m, enc in encoders.items()}
        run_here: dict[str, list[int]] = {}
        for (kind, exits), mode in zip(self.steps, use, strict=True):
            if kind == "exit":
                m, j = exits[0]
                run_here.setdefault(m, []).append(j)
                if mode == "skip":
                    continue
                c, h, w = shapes[m][j]
                head = encoders[m].heads[j]
                if not isinstance(head, ExitHead):
                    raise ValueError(f"{m} exit {j}: a compiled call needs the CNN family's ExitHead")
                self.heads[f"{m}{j}"] = PooledHead(
                    head, float(encoders[m].temperatures[j]), c, h, w, encoders[m].config.head_pool)
            elif fusion is None:
                raise ValueError("a call with a fused check or a final fusion needs the exit grid")
            elif not fusion.passthrough and mode != "skip":
                self.fused[str(len(self.fused_steps))] = FusedHead(fusion, dict(exits))
                self.fused_steps.append(len(self.fused_steps))
        # inputs, in order: raw inputs, hidden maps, embeddings (fused before this call runs them), thresholds
        self.input_names = [f"x_{m}" for m in run_here if m not in self.started]
        self.input_names += [f"h_{m}" for m in run_here if m in self.started]
        self.embedding_in: list[str] = []
        seen: set[str] = set()
        for (kind, exits), mode in zip(self.steps, use, strict=True):
            if kind == "exit":
                seen.add(exits[0][0])
                continue
            if mode == "skip" or (fusion is not None and fusion.passthrough):
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
        self.with_scores, self.logits_out = with_scores, logits_out
        self.output_names = (["pick"] if len(self.scored) > 1 else []) + ["passed", "preds"]
        self.output_names += (["scores"] if with_scores else []) + (["logits"] if logits_out else [])
        self.output_names += [f"out_h_{m}" for m in self.hidden_out]
        self.output_names += [f"out_e_{m}" for m in self.embedding_out]

    def _fuse(self, index: int, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        head = cast(FusedHead, self.fused[str(index)])
        return head([embeddings[m] for m in head.present])  # (B, C)

    def _encoder(self, modality: str) -> CNNEarlyExitEncoder:
        return cast(CNNEarlyExitEncoder, self.encoders[modality])

    def _head(self, modality: str, exit_index: int) -> PooledHead:
        return cast(PooledHead, self.heads[f"{modality}{exit_index}"])

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs, strict=True))
        hidden = {n[2:]: v for n, v in named.items() if n.startswith("h_")}
        embeddings = {n[2:]: v for n, v in named.items() if n.startswith("e_")}
        layer = {m: j + 1 for m, j in self.started.items()}
        for name, x in named.items():
            if name.startswith("x_"):
                m = name[2:]
                hidden[m] = self._encoder(m).stem(x)  # (B, C0, H/s, W/s)
                layer[m] = 0
        step_logits = []
        last_logits: dict[str, torch.Tensor] = {}
        fused = 0
        for (kind, exits), mode in zip(self.steps, self.use, strict=True):
            if kind == "exit":
                m, j = exits[0]
                for block in self._encoder(m).blocks[layer[m] : j + 1]:  # blocks of exits left out run too
                    hidden[m] = block(hidden[m])  # (B, C_j, H_j, W_j)
                layer[m] = j + 1
                if mode == "embed":
                    embeddings[m] = self._head(m, j).embed(hidden[m])  # (B, D): no classifier
                elif mode != "skip":
                    last_logits[m], embeddings[m] = self._head(m, j)(hidden[m])
                if mode == "score":
                    step_logits.append(last_logits[m])
            elif mode == "skip":
                continue
            elif self.fusion is not None and self.fusion.passthrough:
                step_logits.append(last_logits[exits[0][0]])  # one modality: its exit's own logits
            else:
                step_logits.append(self._fuse(fused, embeddings))
                fused += 1
        # every scored step's score at once (a handful of graph nodes, not a handful per step)
        n, classes = len(step_logits), self.num_classes
        stacked = torch.cat(step_logits, dim=1).reshape(-1, n, classes) if n > 1 else step_logits[0]  # (B, S, K) | (B, K)
        probs = torch.softmax(stacked, dim=-1).double()  # float32 softmax, float64 score (as the policy's)
        if self.rule == "entropy":
            entropy = -(probs * torch.log(torch.clamp(probs, min=ENTROPY_FLOOR))).sum(dim=-1)
            scores = entropy / math.log(classes)  # (B, S) | (B,)
            passed = scores <= named["thr"]
        else:
            scores = probs.max(dim=-1).values
            passed = scores >= named["thr"]
        if n == 1:  # one scored step: it is the pick; no ranking nodes
            outs = [passed.reshape(-1), torch.argmax(stacked, dim=-1, keepdim=True)]  # (B,), (B, 1)
            if self.with_scores:
                outs.append(scores.reshape(-1, 1))
        else:
            # the first passing step: a passing step weighs S, S-1, ..., 1 by position and the last step
            # gets 0.5 more, so it stands in (its class is the answer) when none passes
            rank = passed.to(torch.float32) * self.position_weight + self.last_bonus  # (B, S)
            outs = [torch.argmax(rank, dim=1), passed.any(dim=1), torch.argmax(stacked, dim=-1)]  # (B,), (B,), (B, S)
            if self.with_scores:
                outs.append(scores)
        if self.logits_out:
            outs.append(step_logits[-1])  # (B, C): the last step's logits
        outs += [hidden[m] for m in self.hidden_out]
        return tuple(outs + [embeddings[m] for m in self.embedding_out])
