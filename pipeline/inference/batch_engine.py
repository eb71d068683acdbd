"""Batched inference with per-sample exits: the batch-1 engine's walk, run block-wise over many samples.

``BatchEngine.process_batch(samples)`` gives every sample the decision ``Engine.process(sample)``
would give it (same plan, same exit checks, same fused checks, same exits, same MACs), but runs
each encoder step and each fusion once per *group* of samples that want the same step:

    walks = [policy.start(...) for each sample]          # one WalkState per sample
    while any walk is active:
        run every pending CHECK / FUSE, grouped by (modality, exit) key   # cheap heads first
        for each modality: step the samples that want its next exit, as one batch
        each sample's exit scores go to the policy, one row each -> its own next action

Compaction: a modality's batched encoder state keeps only the rows of samples that ask for its
next exit; a sample that exited (or moved on to another modality, which it never leaves to come
back) is dropped with ``encoder.select`` *before* the next block runs, so deeper blocks run only on
the samples still active. Fusion work goes first in every round so that the samples of one encoder
state stay in step (a sample waiting on a fused check would otherwise split the batch).

Energy: one meter window around the whole batch; its energy (and the dynamic and idle parts) is
apportioned to the batch's decisions in proportion to their MACs (equal shares when no MACs are
counted); a sample that failed gets none. With a budget controller, every decision of a batch is
made at the lambda in force when the batch began, and the controller then sees the decisions one
by one (each with its share of the batch's time); so batched and batch-1 decisions are equal
without a budget, and follow the same controller with one.

Isolation: a sample whose payload cannot be adapted, or whose policy walk fails, gets its own
exception back; a batched step or fusion that raises is rerun for each of its samples alone with
the batch-1 engine, so one bad sample never fails the batch. ``latency_ms`` of a decision holds the
wall time of every batched step it took part in (named like the batch-1 engine's stages),
``policy`` and ``total`` (the batch's wall time up to the end of its compute).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from exitflow.encoders.base import EncoderState, ExitOutput
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.inference.batch_rows import (
    apportion_energy,
    concat_inputs,
    gather_rows,
    record_fusion_row,
)
from exitflow.pipeline.inference.engine import Engine
from exitflow.pipeline.messages import Decision, Sample
from exitflow.scheduler.policy import Action, ActionKind, WalkState

FusionKey = tuple[tuple[str, int], ...]  # ((modality, exit index), ...) of one fusion head


@dataclass(eq=False)
class _Walk:
    """One sample's progress through the batch."""

    row: int  # position in the batch (where its result goes)
    sample: Sample
    decision: Decision
    state: WalkState
    action: Action | None = None
    outputs: dict[str, tuple[ExitOutput, int]] = field(default_factory=dict)  # modality -> (batch output, row)
    evaluated: dict[str, list[int]] = field(default_factory=dict)
    checked: tuple[FusionKey, torch.Tensor] | None = None  # the last fused check: its key and logits (C,)
    checks: int = 0
    policy_s: float = 0.0
    done: bool = False
    failed: bool = False  # moved to the batch-1 rerun


@dataclass(eq=False)
class _Cohort:
    """Samples whose encoder state of one modality is one batch (rows in ``walks`` order)."""

    state: EncoderState
    walks: list[_Walk]


class BatchEngine:
    """Runs batches of samples through an :class:`Engine`'s policy, encoders and fusion.

    Args:
        engine: The batch-1 engine whose encoders, fusion, policy, meter, budget and input adapter
            are used (its policy object is shared; it keeps no per-sample state).
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.policy = engine.policy
        self.encoders = engine.encoders
        self.system = engine.system
        # the rerun of a failed group: the same parts, without the batch's meter window and budget
        self._single = Engine(engine.encoders, engine.fusion, engine.policy, meter=None, budget=None,
                              system=engine.system, input_adapter=engine.input_adapter)

    def process(self, sample: Sample) -> Decision:
        """One sample (a batch of one); raises the sample's error like ``Engine.process``."""
        result = self.process_batch([sample])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def process_batch(self, samples: Sequence[Sample]) -> list[Decision | Exception]:
        """Decisions for ``samples`` in order; a sample that failed gets its exception instead."""
        start = time.perf_counter()
        results: list[Decision | Exception | None] = [None] * len(samples)
        meter = self.engine.meter
        if meter is not None:
            meter.begin_window("batch")
        try:
            with torch.inference_mode():
                walks = self._begin(samples, results)
                self._run(walks, results)
            for w in walks:
                if w.failed:  # a step or fusion of its group raised: this sample alone, batch-1
                    try:
                        results[w.row] = self._single.process(w.sample)
                    except Exception as e:  # noqa: BLE001 - this sample's own error, returned to its caller
                        results[w.row] = e
        finally:
            measurement = meter.end_window("batch") if meter is not None else None
        elapsed_s = time.perf_counter() - start
        decisions = [r for r in results if isinstance(r, Decision)]
        for d in decisions:
            d.latency_ms["total"] = elapsed_s * 1000.0
        if measurement is not None:
            apportion_energy(decisions, measurement)
        self._update_budget(decisions, elapsed_s)
        return [r if r is not None else ExitflowError("no result (an engine bug)") for r in results]

    # -- the walks --------------------------------------------------------------------------------
    def _begin(self, samples: Sequence[Sample], results: list[Any]) -> list[_Walk]:
        walks = []
        for row, sample in enumerate(samples):
            try:
                missing = sorted(set(sample.missing) | {m for m in self.policy.num_exits if m not in sample.payloads})
                present = [m for m in sample.present() if m in self.policy.num_exits]
                decision = Decision(
                    sample_id=sample.sample_id, prediction=-1, system=self.system, label=sample.label,
                    timestamp_ns=sample.timestamp_ns, lam=self.policy.lam, thresholds=self.policy.thresholds,
                )
                if not present:  # as the batch-1 engine: a decision that says so, not an error
                    decision.missing = missing
                    results[row] = decision
                    continue
                t0 = time.perf_counter()
                state = self.policy.start(present, missing)
                decision.order = list(state.plan.order)
                w = _Walk(row, sample, decision, state)
                w.policy_s += time.perf_counter() - t0
                self._resolve(w, None)
                walks.append(w)
            except Exception as e:  # noqa: BLE001 - this sample's error; the others go on
                results[row] = e
        return walks

    def _run(self, walks: list[_Walk], results: list[Any]) -> None:
        cohorts: dict[str, list[_Cohort]] = {}
        active = [w for w in walks if not w.done]
        while active:
            self._settle_fusion(active, results)
            for m in self.encoders:
                wanting = [w for w in active if not w.done and w.action is not None
                           and w.action.kind is ActionKind.CONTINUE and w.action.modality == m]
                if wanting:
                    cohorts[m] = self._step(m, wanting, cohorts.get(m, []), results)
            for w in walks:
                if w.done and not w.failed and results[w.row] is None:
                    results[w.row] = w.decision
            active = [w for w in active if not w.done]

    def _resolve(self, w: _Walk, action: Action | None) -> None:
        """Take ``action`` (or the policy's next one) through skips; finish the walk on EXIT."""
        t0 = time.perf_counter()
        if action is None:
            action = self.policy.decide(w.state)
        while action.kind is ActionKind.SKIP:
            if action.modality is None:
                raise ExitflowError(f"the policy skipped no modality ({action.reason}); a scheduler bug")
            (w.decision.missing if action.reason == "missing" else w.decision.skipped).append(action.modality)
            action = self.policy.decide(w.state)
        w.policy_s += time.perf_counter() - t0
        w.action = action
        if action.kind is ActionKind.EXIT:
            m, _ = action.target()
            out, r = w.outputs[m]
            w.decision.prediction = int(out.logits[r].argmax())
            w.decision.exited_by = m
            self._finish(w)

    def _finish(self, w: _Walk) -> None:
        d = w.decision
        d.exits = {m: out.exit_index for m, (out, _) in w.outputs.items()}
        d.exit_layers = {m: out.layer for m, (out, _) in w.outputs.items()}
        d.macs += sum(self.engine._encoder_macs(m, out, w.evaluated[m], r) for m, (out, r) in w.outputs.items())
        d.latency_ms["policy"] = w.policy_s * 1000.0
        w.done = True

    def _fail(self, w: _Walk, results: list[Any], error: Exception | None) -> None:
        """``error``: the sample's own (returned as is); None: its group failed (rerun batch-1)."""
        w.done = True
        if error is None:
            w.failed = True
        else:
            results[w.row] = error

    # -- encoder steps --------------------------------------------------------------------------
    def _step(self, m: str, wanting: list[_Walk], cohorts: list[_Cohort], results: list[Any]) -> list[_Cohort]:
        """Step every walk in ``wanting`` to its next exit of ``m``; returns the cohorts left."""
        enc = self.encoders[m]
        want = set(wanting)
        new = [w for w in wanting if m not in w.outputs]
        if new:
            cohort = self._start(m, new, results)
            cohorts = [*cohorts, cohort] if cohort is not None else cohorts
        kept = []
        for cohort in cohorts:
            by_exit: dict[int, list[int]] = {}
            for r, w in enumerate(cohort.walks):
                if w in want and not w.done and w.action is not None:
                    by_exit.setdefault(w.action.target()[1], []).append(r)
            for index, rows in by_exit.items():  # rows of samples that left m are dropped here
                if len(rows) == len(cohort.walks):
                    sub = cohort
                else:
                    picked = torch.tensor(rows, device=cohort.state.hidden.device)
                    sub = _Cohort(enc.select(cohort.state, picked), [cohort.walks[r] for r in rows])
                if self._step_cohort(m, index, sub, results):
                    kept.append(sub)
        return kept

    def _start(self, m: str, walks: list[_Walk], results: list[Any]) -> _Cohort | None:
        enc = self.encoders[m]
        inputs, ok = [], []
        for w in walks:
            try:  # adapted and checked one by one: a bad payload fails its own sample only
                x = self.engine.input_adapter(m, w.sample.payloads[m])
                validate = getattr(enc, "validate", None)
                if validate is not None:
                    validate(x)
                inputs.append(x)
                ok.append(w)
            except Exception as e:  # noqa: BLE001
                self._fail(w, results, e)
        if not ok:
            return None
        try:
            state = enc.start(concat_inputs(inputs))
        except Exception:  # noqa: BLE001 - e.g. inputs that do not batch: each sample alone
            for w in ok:
                self._fail(w, results, None)
            return None
        return _Cohort(state, ok)

    def _step_cohort(self, m: str, index: int, cohort: _Cohort, results: list[Any]) -> bool:
        enc = self.encoders[m]
        t0 = time.perf_counter()
        try:
            cohort.state.next_exit = index  # exits the policy leaves out: their heads never run
            out = enc.step(cohort.state)
            probs = torch.softmax(out.logits.float(), dim=-1).tolist()  # B lists of C floats
        except Exception:  # noqa: BLE001 - the group is rerun sample by sample
            for w in cohort.walks:
                self._fail(w, results, None)
            return False
        step_ms = (time.perf_counter() - t0) * 1000.0
        for r, w in enumerate(cohort.walks):
            w.decision.latency_ms[f"{m}/{index}"] = step_ms
            w.outputs[m] = (out, r)
            w.evaluated.setdefault(m, []).append(out.exit_index)
            try:
                t1 = time.perf_counter()
                action = self.policy.advance(w.state, m, out.exit_index, probs[r])
                w.policy_s += time.perf_counter() - t1
                self._resolve(w, action)
            except Exception as e:  # noqa: BLE001
                self._fail(w, results, e)
        return True

    # -- fusion -----------------------------------------------------------------------------------
    def _settle_fusion(self, active: list[_Walk], results: list[Any]) -> None:
        """Run every pending CHECK / FUSE (grouped by head) until each walk wants an encoder step."""
        while True:
            groups: dict[FusionKey, list[_Walk]] = {}
            for w in active:
                a = w.action
                if w.done or a is None or a.kind not in (ActionKind.CHECK, ActionKind.FUSE):
                    continue
                key = tuple((m, w.outputs[m][0].exit_index) for m in a.modalities)
                if a.kind is ActionKind.FUSE and w.checked is not None and w.checked[0] == key:
                    self._predict_fused(w, w.checked[1])  # the check just run is this fusion
                    continue
                groups.setdefault(key, []).append(w)
            if not groups:
                return
            for key, ws in groups.items():
                self._fuse_group(key, ws, results)

    def _fuse_group(self, key: FusionKey, walks: list[_Walk], results: list[Any]) -> None:
        fusion = self.engine.fusion
        present = [m for m, _ in key]
        t0 = time.perf_counter()
        try:
            outputs = {m: gather_rows([w.outputs[m] for w in walks]) for m in present}
            if hasattr(fusion, "fuse_exits"):
                fused = fusion.fuse_exits(outputs)
                logits = fused.logits  # (B, C)
            else:
                fused = None
                logits = fusion.fuse({m: o.embedding for m, o in outputs.items()}, present)  # (B, C)
                logits = logits.logits if hasattr(logits, "logits") else logits
            probs = torch.softmax(logits.float(), dim=-1).tolist()
        except Exception:  # noqa: BLE001 - the group is rerun sample by sample
            for w in walks:
                self._fail(w, results, None)
            return
        fuse_ms = (time.perf_counter() - t0) * 1000.0
        for r, w in enumerate(walks):
            d = w.decision
            if fused is not None:
                record_fusion_row(d, fused, r)
            else:
                d.macs += int(getattr(fusion, "macs", 0))
            try:
                if w.action is not None and w.action.kind is ActionKind.CHECK:
                    d.latency_ms[f"fusion/{w.checks}"] = fuse_ms
                    w.checks += 1
                    w.checked = (key, logits[r])
                    t1 = time.perf_counter()
                    action = self.policy.advance_fusion(w.state, probs[r])
                    w.policy_s += time.perf_counter() - t1
                    self._resolve(w, action)
                else:
                    d.latency_ms["fusion"] = fuse_ms
                    self._predict_fused(w, logits[r])
            except Exception as e:  # noqa: BLE001
                self._fail(w, results, e)

    def _predict_fused(self, w: _Walk, logits: torch.Tensor) -> None:
        w.decision.prediction = int(logits.argmax())
        w.decision.exited_by = "fusion"
        if not w.state.fused_passed:  # the walk's end (no check passed): the last rung's input, (C,)
            w.decision.final_logits = logits.detach().float().cpu().numpy()
        self._finish(w)

    # -- budget -----------------------------------------------------------------------------------
    def _update_budget(self, decisions: list[Decision], elapsed_s: float) -> None:
        budget = self.engine.budget
        if budget is None or not decisions:
            return
        for d in decisions:
            controlled = self.engine.budget_energy(d)
            if controlled is not None:
                self.policy.set_lambda(budget.update(controlled, elapsed_s / len(decisions)))
        self.policy.set_cheapest_mode(budget.cheapest_mode)


class SequentialBatch:
    """A batch for an engine that has no batched path (a baseline, a rule engine): one sample after
    another, each sample's exception returned as its result."""

    def __init__(self, engine: Any):
        self.engine = engine

    def process_batch(self, samples: Sequence[Sample]) -> list[Decision | Exception]:
        results: list[Decision | Exception] = []
        for sample in samples:
            try:
                results.append(self.engine.process(sample))
            except Exception as e:  # noqa: BLE001 - this sample's error, returned to its caller
                results.append(e)
        return results


def as_batch_engine(engine: Any) -> BatchEngine | SequentialBatch | Any:
    """What runs batches for ``engine``: itself if it has ``process_batch``, a :class:`BatchEngine`
    for an :class:`Engine` (or a system wrapping one as ``.engine``), else :class:`SequentialBatch`."""
    if hasattr(engine, "process_batch"):
        return engine
    inner = getattr(engine, "engine", None)
    if hasattr(inner, "process_batch"):  # a system around the compiled fast path: it batches itself
        return inner
    if isinstance(engine, Engine):
        return BatchEngine(engine)
    if isinstance(getattr(engine, "engine", None), Engine):
        return BatchEngine(engine.engine)
    return SequentialBatch(engine)
