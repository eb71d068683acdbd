"""A walk program compiled into calls: which graph runs which steps, what each call takes and gives.

``compile_program(program, cuts, parts)`` turns the steps of one plan (``scheduler/program.py``)
cut into calls into :class:`CompiledProgram`: per call a compiled graph (``encoders/call_graph.py``
on a backend), where each of its inputs comes from (a sample's payload or an earlier call's
output), the per-step MACs and names, and the threshold keys of its steps. The engine
(``fast_engine.py``) then only feeds arrays and reads ``first`` / ``pred``.

Per-step costs for the cuts (:func:`measure_step_ms`) are measured on the backend in use: each
step compiled alone and timed at batch 1, minus the time of a call that does nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.call_graph import CallGraph, classifier_macs, map_shapes
from exitflow.encoders.cnn import CNNEarlyExitEncoder
from exitflow.encoders.fusion_grid import ExitGridFusion, grid_key
from exitflow.pipeline.inference.backends import Backend, CompiledCall
from exitflow.pipeline.inference.engine import EngineError
from exitflow.scheduler.program import Program, Step

INF = float("inf")


@dataclass
class CompiledCallPlan:
    """One call of a compiled program.

    Attributes:
        call: The compiled graph.
        start, stop: The program steps it runs (``steps[start:stop]``).
        inputs: Per graph input: ``("x", modality)`` a payload, ``("h" | "e", modality)`` a carried
            array, ``("thr", "")`` the thresholds.
        carry: Graph output name -> carried key (``h_audio``...), for later calls.
        step_macs: Per-sample MACs of each of its steps.
        keys: The threshold key of each scored step (None: always passes).
        name: Stage name in a decision's ``latency_ms``, e.g. ``image/0-2+audio/0+fusion``.
    """

    call: CompiledCall
    start: int
    stop: int
    inputs: list[tuple[str, str]]
    carry: dict[int, str]
    step_macs: list[int]
    keys: list[str | None]
    name: str
    macs_through: list[int] = field(default_factory=list)  # MACs of the call's steps up to and including i
    scored: list[int] = field(default_factory=list)  # call-local positions of the scored steps (``pick`` indexes it)
    i_pick: int | None = None  # output positions of pick (None: one scored step), passed and preds
    i_passed: int = 0
    i_preds: int = 1
    i_logits: int | None = None  # the final call's last-step logits (the last rung's input)


@dataclass
class CompiledProgram:
    """A program, its cuts and its calls; ``exits_at[i]`` is each modality's latest exit at step i."""

    program: Program
    cuts: tuple[int, ...]
    calls: list[CompiledCallPlan]
    exits_at: list[dict[str, int]]
    fused_at: list[int]  # fused checks run up to and including step i (the final fusion counts)
    uses: list[str] = field(default_factory=list)  # what of each step runs (CallGraph's ``use``)


def cnn_family(encoders: Mapping[str, EarlyExitEncoder], fusion: Any) -> tuple[dict[str, CNNEarlyExitEncoder],
                                                                              ExitGridFusion | None]:
    """``encoders`` and ``fusion`` checked to be what the compiled calls read (CNN encoders with exits, the exit
    grid or no fusion), typed as such; EngineError naming the ones that are not."""
    bad = [m for m, e in encoders.items() if not isinstance(e, CNNEarlyExitEncoder)]
    if bad:
        raise EngineError(f"the compiled fast path runs the CNN family; {bad} are not CNN encoders "
                          "(set engine.backend: torch for them)")
    if fusion is not None and not isinstance(fusion, ExitGridFusion):
        raise EngineError(f"the compiled fast path fuses with the exit grid, not {type(fusion).__name__} "
                          "(set engine.backend: torch)")
    return {m: cast(CNNEarlyExitEncoder, e) for m, e in encoders.items()}, fusion


def step_macs(step: Step, encoders: Mapping[str, CNNEarlyExitEncoder], fusion: ExitGridFusion | None,
              layer_before: Mapping[str, int], use: str = "score") -> int:
    """Per-sample MACs of one step as it runs (``use``, see :class:`CallGraph`): the blocks since the
    modality's last exit plus what of the exit's head runs (exit steps), or the fusion head (checks, the
    final fusion; 0 for a one-modality grid or a skipped check)."""
    if step.kind == "exit":
        m, j = step.exits[0]
        segs = encoders[m].segment_macs()
        done = layer_before.get(m, 0)
        head = encoders[m].head_macs()[j]
        if use == "embed":
            head -= classifier_macs(encoders[m], j)
        elif use == "skip":
            head = 0
        return int(sum(segs[done : j + 1]) + head)
    if fusion is None or fusion.passthrough or use == "skip":
        return 0
    chosen = dict(step.exits)
    full = {m: chosen.get(m, len(fusion.dims[m]) - 1) for m in fusion.modalities}
    return int(fusion.head_macs[grid_key(full, fusion.modalities)])


def step_uses(steps: Sequence[Step], live: Sequence[bool], passthrough: bool) -> list[str]:
    """What of each step runs (``CallGraph``'s ``use``) when ``live[i]`` says whether step i's threshold can
    pass at all: a step that cannot stop the walk needs no score; an exit's head runs only as far as a
    later fused step (or a one-modality final step) reads it."""
    uses = ["score" if ok or s.key is None else "skip" for s, ok in zip(steps, live, strict=True)]
    for i, s in enumerate(steps):
        if s.kind != "exit" or uses[i] == "score":
            continue
        later = [(t, u) for t, u in zip(steps[i + 1 :], uses[i + 1 :], strict=True) if t.kind != "exit" and u != "skip"]
        if passthrough and any(t.kind == "final" and s.exits[0] in t.exits for t, _ in later):
            uses[i] = "logits"
        elif not passthrough and any(s.exits[0] in t.exits for t, _ in later):
            uses[i] = "embed"
    return uses


def _stage_name(steps: Sequence[Step]) -> str:
    return "+".join(s.name for s in steps)


def example_input(name: str, encoders: Mapping[str, CNNEarlyExitEncoder], started: Mapping[str, int],
                  n_steps: int, batch: int = 2) -> np.ndarray:
    """A zero array shaped like graph input ``name`` (for tracing); batch 2 so the axis stays free."""
    if name == "thr":
        return np.zeros(n_steps, dtype=np.float64)
    kind, m = name.split("_", 1)
    enc = encoders[m]
    if kind == "x":
        cfg = enc.config
        return np.zeros((batch, cfg.num_channels, cfg.input_size, cfg.input_size), dtype=np.float32)
    c, h, w = map_shapes(enc)[started[m]]
    if kind == "h":
        return np.zeros((batch, c, h, w), dtype=np.float32)
    return np.zeros((batch, enc.embed_dims[started[m]]), dtype=np.float32)


def compile_call(backend: Backend, encoders: Mapping[str, CNNEarlyExitEncoder], fusion: ExitGridFusion | None,
                 steps: Sequence[Step], started: Mapping[str, int], rule: str,
                 hidden_out: Sequence[str] = (), embedding_out: Sequence[str] = (),
                 use: Sequence[str] | None = None, with_scores: bool = False,
                 logits_out: bool = False) -> tuple[CallGraph, CompiledCall]:
    """Build the :class:`CallGraph` of ``steps`` and compile it on ``backend``."""
    graph = CallGraph(encoders, fusion, steps, started, rule, hidden_out, embedding_out, use, with_scores,
                      logits_out).eval()
    examples = [example_input(n, encoders, started, len(graph.scored)) for n in graph.input_names]
    batched = [n for n in graph.input_names if n != "thr"]
    return graph, backend.compile(graph, examples, graph.input_names, graph.output_names, batched)


def compile_program(program: Program, cuts: Sequence[int], backend: Backend,
                    encoders: Mapping[str, CNNEarlyExitEncoder], fusion: ExitGridFusion | None,
                    rule: str, live: Sequence[bool] | None = None) -> CompiledProgram:
    """Compile ``program`` cut at ``cuts`` (0 first, ``len(steps)`` last) into calls; ``live[i]``: whether
    step i's threshold can pass at all (None: all can). A cut after a step that cannot pass is dropped:
    a call ends with a step that may stop the walk."""
    steps = program.steps
    if not cuts or cuts[0] != 0 or cuts[-1] != len(steps) or any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
        raise ValueError(f"cuts must rise from 0 to {len(steps)}, got {tuple(cuts)}")
    live = list(live) if live is not None else [True] * len(steps)
    uses = step_uses(steps, live, fusion is not None and fusion.passthrough)
    cuts = [c for c in cuts if c in (0, len(steps)) or uses[c - 1] == "score"]
    # where every step stands: each modality's latest exit, and the MACs of each step in walk order
    exits_at, fused_at, all_macs = [], [], []
    latest: dict[str, int] = {}
    fused = 0
    for s, use in zip(steps, uses, strict=True):
        layer_before = {m: j + 1 for m, j in latest.items()}
        all_macs.append(step_macs(s, encoders, fusion, layer_before, use))
        if s.kind == "exit":
            latest[s.modality] = s.exit_index
        elif use != "skip":
            fused += 1  # the fusion heads that ran
        exits_at.append(dict(latest))
        fused_at.append(fused)
    calls = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        started = exits_at[a - 1] if a > 0 else {}
        here = [s for s in steps[a:b] if s.kind == "exit"]
        run = list(dict.fromkeys(s.modality for s in here))
        later = list(zip(steps[b:], uses[b:], strict=True))
        later_exit = {s.modality for s, _ in later if s.kind == "exit"}
        later_fused = {m for s, u in later if s.kind != "exit" and u != "skip" for m, _ in s.exits}
        hidden_out = [m for m in run if m in later_exit]
        embedding_out = [m for m in run if m in later_fused]
        graph, call = compile_call(backend, encoders, fusion, steps[a:b], started, rule, hidden_out, embedding_out,
                                   uses[a:b], logits_out=b == len(steps))  # the final call: its logits too
        inputs = [(n.split("_", 1)[0], n.split("_", 1)[1]) if n != "thr" else ("thr", "") for n in graph.input_names]
        carry = {i: n[4:] for i, n in enumerate(graph.output_names) if n.startswith("out_")}
        macs = all_macs[a:b]
        names = graph.output_names
        calls.append(CompiledCallPlan(
            call=call, start=a, stop=b, inputs=inputs, carry=carry, step_macs=macs,
            i_pick=names.index("pick") if "pick" in names else None, i_passed=names.index("passed"),
            i_preds=names.index("preds"), i_logits=names.index("logits") if "logits" in names else None,
            keys=[steps[a + i].key for i in graph.scored], name=_stage_name(steps[a:b]),
            macs_through=list(np.cumsum(macs).tolist()), scored=list(graph.scored),
        ))
    return CompiledProgram(program=program, cuts=tuple(cuts), calls=calls, exits_at=exits_at, fused_at=fused_at,
                           uses=uses)


class _Nothing(nn.Module):
    """The cheapest graph a backend can run: one input, one output (times a call's fixed cost)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0


def _time_call(call: CompiledCall, inputs: Sequence[np.ndarray], repeats: int) -> float:
    for _ in range(max(3, repeats // 5)):
        call(inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call(inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def measure_call_ms(backend: Backend, repeats: int = 200) -> float:
    """Median ms of a call that does nothing on ``backend`` (its fixed per-run cost)."""
    x = np.zeros((1, 4), dtype=np.float32)
    call = backend.compile(_Nothing(), [np.zeros((2, 4), dtype=np.float32)], ["x"], ["y"], ["x"])
    return _time_call(call, [x], repeats)


def measure_step_ms(program: Program, backend: Backend, encoders: Mapping[str, CNNEarlyExitEncoder],
                    fusion: ExitGridFusion | None, rule: str, call_ms: float, repeats: int = 50) -> list[float]:
    """Compute ms of each step of ``program`` at batch 1 on ``backend``: the step compiled as a call of its
    own (its inputs zeros of the right shapes), median time minus ``call_ms``, floored at 0."""
    out: list[float] = []
    latest: dict[str, int] = {}
    for s in program.steps:
        if s.kind == "final" and fusion is not None and fusion.passthrough:
            out.append(0.0)  # the last exit's own logits: nothing to compute, never a call of its own
            continue
        graph, call = compile_call(backend, encoders, fusion, [s], latest, rule)
        inputs = [example_input(n, encoders, latest, len(graph.scored), batch=1) for n in graph.input_names]
        inputs = [np.full(1, INF) if n == "thr" else x for n, x in zip(graph.input_names, inputs, strict=True)]
        out.append(max(0.0, _time_call(call, inputs, repeats) - call_ms))
        if s.kind == "exit":
            latest = {**latest, s.modality: s.exit_index}
    return out
