"""The fast path: the engine's walk as compiled calls, one table look-up of policy per sample.

:class:`FastEngine` gives every sample the decision :class:`~pipeline.inference.engine.Engine`
gives it (same plan, same exits, same fused checks, same prediction; ``tests/pipeline/
test_fast_engine.py`` holds them equal on 1,000 samples) at a fraction of its time. Where the
reference engine asks the policy after every exit and runs each step as eager PyTorch modules, the
fast engine:

1. looks the walk up: the policy's plan for the sample's present modalities at the current lambda
   band, as a static program of steps (``scheduler/program.py``), compiled once per plan;
2. runs the program's *calls* (consecutive steps in one graph on ONNX Runtime, ``backends/``) whose
   cut minimises the expected time, from the steps' costs measured on this backend and the
   profile's exit probabilities (:func:`scheduler.program.choose_cuts`);
3. reads ``first`` (the first step that passed its threshold, tested inside the graph) and
   ``pred`` back from each call: the policy's per-sample work is that read.

Steps after the first passing one *within* a call run anyway (that is what a cut trades): their
MACs are counted in the decision, which is never changed by them. Batches (``process_batch``) run
each call once over the samples still walking (compaction: a sample that stopped leaves the
batch before the next call), cut as the batch-1 walk is (measured faster at batch 32 than a call per
step: the image steps almost never stop a walk, so compaction between them buys nothing).

Energy: one meter window per sample (batch-1) or per batch, as the reference engine and batch
engine do; a budget controller updates lambda after each sample (the thresholds follow it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exitflow.encoders.base import EarlyExitEncoder, EncoderInputError
from exitflow.pipeline.inference.backends import Backend
from exitflow.pipeline.inference.batch_rows import apportion_energy
from exitflow.pipeline.inference.compiled_walk import (
    INF,
    CompiledProgram,
    cnn_family,
    compile_program,
    measure_call_ms,
    measure_step_ms,
)
from exitflow.pipeline.inference.energy_windows import WindowedEnergy
from exitflow.pipeline.inference.engine import Engine, EngineError, PowerMeterLike, budget_step
from exitflow.pipeline.messages import Decision, Sample
from exitflow.scheduler.budget import BudgetController
from exitflow.scheduler.policy import Policy
from exitflow.scheduler.program import Program, choose_cuts, walk_program

log = logging.getLogger(__name__)

CHECK_PASS_PRIOR = 0.5  # P(a fused check passes | reached) before anything is known of it


def finite(x: np.ndarray, zeros: np.ndarray) -> bool:
    """Whether every value of the float32 array ``x`` is finite: ``x . 0`` is 0 unless a NaN or inf is in
    ``x`` (0 * inf and 0 * NaN are NaN), one dot product instead of an elementwise pass and a reduction."""
    return math.isfinite(np.dot(x.reshape(-1), zeros))  # an inf also shows numpy's "invalid value" warning


class FastEngine(Engine):
    """Runs samples through a policy's walk compiled into calls on a backend (see the module doc).

    Args:
        encoders: Modality -> CNN encoder with exits (eval mode).
        fusion: The exit grid.
        policy: The per-sample policy (rule ``entropy`` or ``max_prob``).
        backend: Where the calls run (``backends.open_backend``).
        meter, budget, system, budget_energy, cheapest_mj: as :class:`Engine`.
        step_costs: ``{"call_ms": float, "step_ms": {program name: [ms, ...]}}``: costs to use instead
            of measuring (fixed cuts for tests); what is missing is measured once and stored in it.
        cuts: ``"auto"`` (least expected time), ``"steps"`` (a call per step) or ``"one"`` (the
            whole walk in one call).
        meter_window_ms: > 0: read the meter once per window this long and price samples by the
            window's mean power (``energy_windows.py``); 0: a meter window per sample.
        batch_cuts: ``"auto"`` (batches cut as the batch-1 walk) or ``"steps"`` (a call per step).
        prune: Leave out what a step whose threshold cannot pass would compute for nothing (its score, and
            its exit's classifier unless a later step reads it); False runs every step as the eager walk does.
    """

    def __init__(
        self,
        encoders: Mapping[str, EarlyExitEncoder],
        fusion: Any,
        policy: Policy,
        backend: Backend,
        meter: PowerMeterLike | None = None,
        budget: BudgetController | None = None,
        system: str = "exitflow",
        budget_energy: str = "dynamic",
        cheapest_mj: float | None = None,
        step_costs: dict[str, Any] | None = None,
        cuts: str = "auto",
        meter_window_ms: float = 0.0,
        batch_cuts: str = "auto",
        prune: bool = True,
    ):
        cnn, grid = cnn_family(encoders, fusion)
        if cuts not in ("auto", "steps", "one"):
            raise EngineError(f"cuts must be auto, steps or one, got {cuts!r}")
        super().__init__(encoders, fusion, policy, meter=meter, budget=budget, system=system,
                         budget_energy=budget_energy, cheapest_mj=cheapest_mj)
        walk_program(policy, policy.profile.modalities)  # raises now for a rule without a static walk
        self.backend = backend
        self.cnn, self.grid = cnn, grid  # the same encoders and fusion, typed as what the compiled calls read
        self.cuts_mode = cuts
        self.prune = prune
        self.batch_cuts = batch_cuts  # "auto": batches use the walk's cuts; "steps": compaction after every step
        # shared and filled in place: every engine built from the same parts measures a program once
        self.step_costs: dict[str, Any] = step_costs if step_costs is not None else {}
        self.step_costs.setdefault("step_ms", {})
        self._compiled: dict[tuple[Any, ...], CompiledProgram] = {}  # in force, by plan key
        self._all: dict[tuple[Any, ...], CompiledProgram] = {}  # every compiled program, by plan key and live steps
        self._programs: dict[tuple[Any, ...], Program] = {}
        self._live_source: dict[str, float] | None = None
        self._shown_source: dict[str, float] | None = None
        self._shown: dict[str, float] = {}
        self._last: tuple[Any, ...] | None = None  # (present, band, cheapest mode, program) of the last sample
        self._cheapest_ms: float | None = None  # the cheapest first exit's time on this backend (warm_up)
        self._cheapest_priced = False
        self._thr_cache: dict[tuple[int, int], np.ndarray] = {}
        self._thr_source: dict[str, float] | None = None
        self._shapes = {m: (e.config.num_channels, e.config.input_size, e.config.input_size)
                        for m, e in cnn.items()}
        self.modalities = tuple(policy.num_exits)
        self.windowed = WindowedEnergy(meter, meter_window_ms) if meter is not None and meter_window_ms > 0 else None
        self._sets_cache: dict[tuple[Any, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._stops: dict[tuple[int, int], tuple[Any, ...]] = {}  # decision fields per (program, stop step)
        # a zero vector per modality: x . 0 is NaN exactly when x holds a NaN or an inf (one BLAS call)
        self._zeros = {m: np.zeros(int(np.prod(shape)), dtype=np.float32) for m, shape in self._shapes.items()}

    # -- programs ---------------------------------------------------------------------------------
    def program_for(self, present: tuple[str, ...], missing: tuple[str, ...], batch: bool = False) -> CompiledProgram:
        """The compiled program of the current plan for ``present`` (compiled on first use, and again when a
        threshold change makes a step able or unable to pass)."""
        policy = self.policy
        key = (policy._plan_band, present, missing, policy.cheapest_mode, batch)
        program = self._programs.get(key[:4])
        if program is None:
            program = self._programs[key[:4]] = walk_program(policy, present, missing)
            if not program.plan.order:
                raise EngineError(f"the plan for {present} runs no modality (all skipped or missing)")
        live = self._live(program)
        same_cuts = batch and self.batch_cuts == "auto" and self.cuts_mode == "auto"
        full_key = (*key[:4], False if same_cuts else batch, live)  # batches reuse the batch-1 calls when cut alike
        compiled = self._all.get(full_key)
        if compiled is None:
            cuts = self._cuts(program, batch, live)
            compiled = compile_program(program, cuts, self.backend, self.cnn, self.grid, policy.exit_rule, live)
            self._all[full_key] = compiled
            log.info("compiled %s: %s", self.system, " | ".join(c.name for c in compiled.calls))
        self._compiled[key] = compiled
        return compiled

    def invalidate_plans(self) -> None:
        """Forget every cached program (the policy's plans changed for another reason than lambda, e.g.
        modality skipping switched off); compiled again on next use."""
        for cache in (self._programs, self._all, self._compiled, self._stops):
            cache.clear()
        self._last = None

    def warm_up(self, present: Sequence[str] | None = None) -> CompiledProgram:
        """Compile (and time) the walk for ``present`` modalities (all by default) now, so that the first
        sample of a stream does not wait for it; also times the cheapest first exit on this backend."""
        mods = tuple(present) if present is not None else self.modalities
        missing = tuple(sorted(m for m in self.modalities if m not in mods))
        compiled = self.program_for(mods, missing)
        if self.cuts_mode == "auto":
            program = compiled.program
            step_ms = self.measured_step_ms(program)
            firsts = {}
            for s, ms in zip(program.steps, step_ms, strict=True):
                if s.kind == "exit" and s.modality not in firsts:
                    firsts[s.modality] = ms + self.call_ms()
            self._cheapest_ms = min(firsts.values()) if firsts else None
        return compiled

    def _price_cheapest(self, decision: Decision, seconds: float) -> None:
        """Once a decision carries energy: the cheapest plan's energy on this backend (its first exit's
        measured time x the power of that decision) replaces the profile's (measured on the engine that
        profiled, usually the eager one), and the budget re-checks whether it is reachable."""
        if self._cheapest_priced or self._cheapest_ms is None or seconds <= 0:
            return
        energy = self.budget_energy(decision) if self.budget is not None else decision.dynamic_energy_mj
        if energy is None:
            return
        power = energy / seconds  # mJ / s = mW
        self._cheapest_priced = True
        self.cheapest_mj = power * self._cheapest_ms / 1000.0  # mW x ms / 1000 = mJ
        if self.budget is not None:
            self.budget.cheapest_mj = self.cheapest_mj
            self.budget.set_budget(mj_per_sample=self.budget.mj_per_sample, power_w=self.budget.power_w)
            self.policy.set_cheapest_mode(self.budget.cheapest_mode)

    def _live(self, program: Program) -> tuple[bool, ...]:
        """Per step: can its threshold pass at all? (entropy lies in [0, 1], max probability in (0, 1])."""
        thresholds, rule = self.policy._thresholds, self.policy.exit_rule
        if not self.prune:
            return (True,) * len(program.steps)
        return tuple(s.key is None or (thresholds[s.key] >= 0.0 if rule == "entropy" else thresholds[s.key] <= 1.0)
                     for s in program.steps)

    def _current(self, key: tuple[Any, ...]) -> CompiledProgram | None:
        """The program in force for ``key``; after a threshold change, only while its live steps still hold."""
        thresholds = self.policy._thresholds
        if thresholds is not self._live_source:
            self._live_source = thresholds
            self._compiled.clear()  # looked up again (cheap: compiled programs stay in self._all)
            return None
        return self._compiled.get(key)

    def _cuts(self, program: Program, batch: bool, live: tuple[bool, ...]) -> tuple[int, ...]:
        n = len(program.steps)
        if self.cuts_mode == "steps" or (batch and self.batch_cuts == "steps"):
            cuts = tuple(range(n + 1))
        elif self.cuts_mode == "one":
            cuts = (0, n)
        else:
            prior = [p if ok else 0.0 for p, ok in zip(self.pass_prior(program), live, strict=True)]
            cuts = choose_cuts(self.measured_step_ms(program), self.call_ms(), prior)
        if self.grid is not None and self.grid.passthrough and n > 1:
            # one modality: the final step answers with the last exit's own logits, so it shares that exit's call
            cuts = tuple(c for c in cuts if c != n - 1)
        return cuts

    def call_ms(self) -> float:
        """The backend's fixed cost of one call, ms (measured once)."""
        if "call_ms" not in self.step_costs:
            self.step_costs["call_ms"] = measure_call_ms(self.backend)
        return float(self.step_costs["call_ms"])

    def measured_step_ms(self, program: Program) -> list[float]:
        """Compute ms per step of ``program`` on this backend (measured once per program, or given)."""
        name = "|".join(s.name for s in program.steps)
        known = self.step_costs["step_ms"]
        if name not in known:
            known[name] = measure_step_ms(program, self.backend, self.cnn, self.grid,
                                          self.policy.exit_rule, self.call_ms())
        return [float(v) for v in known[name]]

    def pass_prior(self, program: Program) -> list[float]:
        """P(step passes | reached) per step: the profile's exit probability for exits, a prior for checks."""
        profile = self.policy.profile
        out = []
        for s in program.steps:
            if s.key is None:
                out.append(1.0)
            elif s.kind == "exit":
                out.append(float(profile.exits[s.modality][s.exit_index].exit_prob))
            else:
                out.append(CHECK_PASS_PRIOR)
        return out

    def _thresholds(self, compiled: CompiledProgram, index: int) -> np.ndarray:
        """The threshold vector of call ``index`` under the thresholds now in force (cached until the
        policy's thresholds change: lambda, the budget, online recalibration)."""
        policy = self.policy
        thresholds = policy._thresholds
        if thresholds is not self._thr_source:  # the policy replaces its dict on every change
            self._thr_cache.clear()
            self._thr_source = thresholds  # held: identity, not id(), so a freed dict is never mistaken
        key = (id(compiled), index)
        arr = self._thr_cache.get(key)
        if arr is None:
            always = INF if policy.exit_rule == "entropy" else -INF
            arr = np.array([always if k is None else thresholds[k] for k in compiled.calls[index].keys],
                           dtype=np.float64)
            self._thr_cache[key] = arr
        return arr

    # -- inputs -----------------------------------------------------------------------------------
    def _input(self, sample: Sample, modality: str) -> np.ndarray:
        """The payload as a finite float32 (1, C, H, W) array, or an EncoderInputError."""
        x = sample.payloads[modality]
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
            except (TypeError, ValueError) as e:
                raise EncoderInputError(f"{modality} input is not an array ({type(x).__name__}): {e}") from e
        want = self._shapes[modality]
        if x.shape != want:
            raise EncoderInputError(
                f"{modality} input must have shape (B, {want[0]}, {want[1]}, {want[2]}), got {(1, *x.shape)}; "
                f"resize/convert it to {want[0]} channel(s) of {want[1]}x{want[2]} first")
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        if not finite(x, self._zeros[modality]):
            raise EncoderInputError(f"{modality} input has NaN/inf values in samples [0]")
        return x[None]

    def _sets(self, sample: Sample) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(present, missing) modalities of ``sample`` as the reference engine computes them (cached)."""
        key = (tuple(sample.payloads), sample.missing)
        found = self._sets_cache.get(key)
        if found is None:
            known = self.policy.num_exits
            present = tuple(m for m in sample.payloads if m not in sample.missing and m in known)
            missing = tuple(sorted(set(sample.missing) | {m for m in known if m not in sample.payloads}))
            found = self._sets_cache[key] = (present, missing)
        return found

    # -- batch of one -----------------------------------------------------------------------------
    def process(self, sample: Sample) -> Decision:
        """Run one sample; the decision the reference engine would give, from compiled calls."""
        perf = time.perf_counter
        total_start = perf()
        present, missing = self._sets(sample)
        policy = self.policy
        decision = Decision(sample_id=sample.sample_id, prediction=-1, system=self.system, label=sample.label,
                            timestamp_ns=sample.timestamp_ns, lam=policy._lam, thresholds=self._shown_thresholds())
        if not present:
            decision.missing = list(missing)
            decision.latency_ms["total"] = (perf() - total_start) * 1000.0
            log.warning("sample %s has none of the modalities %s; no prediction", sample.sample_id,
                        sorted(policy.num_exits))
            return decision
        t0 = perf()
        band, cheapest = policy._plan_band, policy.cheapest_mode
        last = self._last
        if (last is not None and last[0] is present and last[1] == band and last[2] is cheapest
                and policy._thresholds is self._live_source):
            compiled = last[3]  # the same plan as the sample before (the common case on a stream)
        else:
            key = (band, present, missing, cheapest, False)
            compiled = self._compiled.get(key) if policy._thresholds is self._live_source else self._current(key)
            if compiled is None:
                compiled = self.program_for(present, missing)
            self._last = (present, band, cheapest, compiled)
        t1 = perf()
        policy_s = t1 - t0
        windowed = self.windowed
        meter = self.meter if windowed is None else None
        if meter is not None:
            meter.begin_window("sample")
        elif windowed is not None:
            windowed.begin()
        try:
            carried: dict[str, np.ndarray] = {}
            macs = 0
            calls = compiled.calls
            final = len(calls) - 1
            latency = decision.latency_ms
            for index, call in enumerate(calls):
                feed = [self._input(sample, m) if kind == "x" else
                        self._thresholds(compiled, index) if kind == "thr" else carried[f"{kind}_{m}"]
                        for kind, m in call.inputs]
                t0 = perf()
                outs = call.call(feed)
                t1 = perf()
                # the policy's part: did the walk stop in this call, and at which step
                stopped = outs[call.i_passed][0] or index == final
                pick = (0 if call.i_pick is None else int(outs[call.i_pick][0])) if stopped else -1
                policy_s += perf() - t1
                latency[call.name] = (t1 - t0) * 1000.0
                macs += call.macs_through[-1]
                if stopped:  # the answer: that step's class (read outside the policy's clock, as the reference's)
                    stop, pred = call.start + call.scored[pick], int(outs[call.i_preds][0, pick])
                    if call.i_logits is not None and stop == len(compiled.program.steps) - 1:
                        decision.final_logits = outs[call.i_logits][0]  # (C,): the walk's end, the last rung's input
                    break
                for i, name in call.carry.items():
                    carried[name] = outs[i]
        except BaseException:
            if meter is not None:
                meter.end_window("sample")
            raise
        if meter is not None:
            self._record_energy(decision, [meter.end_window("sample")])
        elif windowed is not None:
            windowed.attribute(decision, perf() - total_start)
        if not self._cheapest_priced and (meter is not None or windowed is not None):
            self._price_cheapest(decision, perf() - total_start)
        self._fill(decision, compiled, stop, pred, macs, compiled.program.plan)
        if self.budget is not None:
            t0 = perf()
            self._after_sample(decision, total_start, t0)
            policy_s += perf() - t0
        latency["policy"] = policy_s * 1000.0
        latency["total"] = (perf() - total_start) * 1000.0
        return decision

    def _shown_thresholds(self) -> dict[str, float]:
        """The thresholds in force, as decisions show them: one dict per change, shared by the decisions made
        under it (read-only for them)."""
        source = self.policy._thresholds
        if source is not self._shown_source:
            self._shown_source, self._shown = source, dict(source)
        return self._shown

    def _fill(self, decision: Decision, compiled: CompiledProgram, stop: int, pred: int, macs: int, plan: Any) -> None:
        """The decision fields of a walk that stopped at step ``stop`` with class ``pred``."""
        key = (id(compiled), stop)
        found = self._stops.get(key)
        if found is None:
            step = compiled.program.steps[stop]
            exits = compiled.exits_at[stop]
            found = self._stops[key] = (
                dict(exits), {m: self.encoders[m].exit_layers[j] for m, j in exits.items()},
                compiled.fused_at[stop], step.modality if step.kind == "exit" else "fusion",
                list(plan.order), list(plan.missing), list(plan.skipped))
        exits, layers, fused, exited_by, order, missing, skipped = found
        decision.order, decision.missing, decision.skipped = order.copy(), missing.copy(), skipped.copy()
        decision.exits, decision.exit_layers = exits.copy(), layers.copy()
        decision.fused_checks, decision.exited_by = fused, exited_by
        decision.prediction, decision.macs = pred, macs

    def _after_sample(self, decision: Decision, total_start: float, now: float) -> None:
        """The budget controller's update, as the reference engine's (it sees the time up to ``now``)."""
        if self.budget is not None:
            budget_step(self, self.budget, decision, now - total_start)

    # -- batches ----------------------------------------------------------------------------------
    def process_batch(self, samples: Sequence[Sample]) -> list[Decision | Exception]:
        """Decisions for ``samples`` in order (a sample that failed gets its exception): each call runs
        once over the samples still walking; a sample whose walk stopped leaves before the next call."""
        start = time.perf_counter()
        results: list[Decision | Exception | None] = [None] * len(samples)
        meter = self.meter
        if meter is not None:
            meter.begin_window("batch")
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
        try:
            for row, sample in enumerate(samples):
                present, missing = self._sets(sample)
                if not present:
                    results[row] = self._single_process(sample)
                    continue
                groups.setdefault((present, missing), []).append(row)
            for (present, missing), rows in groups.items():
                self._run_group(samples, rows, present, missing, results, start)
        finally:
            m = meter.end_window("batch") if meter is not None else None
        done = [r for r in results if isinstance(r, Decision)]
        if m is not None:
            apportion_energy(done, m)
        for d in done:
            d.latency_ms["total"] = (time.perf_counter() - start) * 1000.0
        if self.budget is not None:
            for d in done:
                self._after_sample(d, start, time.perf_counter())  # the controller sees each decision
        return [r if r is not None else EngineError("no result") for r in results]

    def _single_process(self, sample: Sample) -> Decision | Exception:
        try:
            return self.process(sample)
        except Exception as e:  # a sample's own error, returned in its place
            return e

    def _stack(self, samples: Sequence[Sample], rows: list[int], modalities: Sequence[str],
               results: list[Any]) -> tuple[dict[str, np.ndarray], list[int]]:
        """The rows' payloads stacked per modality, (N, C, H, W) float32, and the rows that are fine; a row
        with a bad payload gets its own error. One stack and one finiteness product per modality."""
        try:
            stacked = {}
            for m in modalities:
                want = self._shapes[m]
                out = stacked[m] = np.empty((len(rows), *want), dtype=np.float32)
                for i, r in enumerate(rows):
                    x = samples[r].payloads[m]
                    if not isinstance(x, np.ndarray) or x.shape != want:
                        raise ValueError(f"{m} payload of row {r} is not a {want} array")
                    out[i] = x
        except Exception:  # ragged or odd payloads: each row checked alone, its own error
            ok: list[int] = []
            arrays: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
            for r in rows:
                try:
                    one = {m: self._input(samples[r], m) for m in modalities}
                except Exception as e:
                    results[r] = e
                    continue
                ok.append(r)
                for m, x in one.items():
                    arrays[m].append(x)
            return ({m: np.concatenate(xs) for m, xs in arrays.items()} if ok else {}), ok
        bad = np.zeros(len(rows), dtype=bool)
        for m, x in stacked.items():
            bad |= ~np.isfinite(x.reshape(len(rows), -1) @ self._zeros[m])  # NaN/inf rows: x . 0 is NaN
        if bad.any():
            for bad_row in np.flatnonzero(bad).tolist():
                try:
                    for m in modalities:
                        self._input(samples[rows[bad_row]], m)
                except Exception as e:
                    results[rows[bad_row]] = e
            keep = ~bad
            stacked = {m: x[keep] for m, x in stacked.items()}
            rows = [r for r, k in zip(rows, keep, strict=True) if k]
        return stacked, rows

    def _run_group(self, samples: Sequence[Sample], rows: list[int], present: tuple[str, ...],
                   missing: tuple[str, ...], results: list[Any], start: float) -> None:
        try:
            compiled = self._current((self.policy._plan_band, present, missing, self.policy.cheapest_mode, True))
            if compiled is None:
                compiled = self.program_for(present, missing, batch=True)
        except Exception as e:
            for r in rows:
                results[r] = e
            return
        stacked, ok_rows = self._stack(samples, rows, compiled.program.plan.order, results)
        if not ok_rows:
            return
        active = np.arange(len(ok_rows))
        carried: dict[str, np.ndarray] = {}
        macs = np.zeros(len(ok_rows), dtype=np.int64)
        latency: dict[str, float] = {}
        stops = np.full(len(ok_rows), -1)
        preds = np.full(len(ok_rows), -1)
        final_logits: dict[int, np.ndarray] = {}
        calls = compiled.calls
        for index, call in enumerate(calls):
            everyone = len(active) == len(ok_rows)
            feed = [(stacked[m] if everyone else stacked[m][active]) if kind == "x"
                    else self._thresholds(compiled, index) if kind == "thr" else carried[f"{kind}_{m}"]
                    for kind, m in call.inputs]
            t0 = time.perf_counter()
            try:
                outs = call.call(feed)
            except Exception:  # a batched call failed: each of its samples alone, batch-1
                for a in active.tolist():
                    results[ok_rows[a]] = self._single_process(samples[ok_rows[a]])
                stops[active] = -2
                break
            latency[call.name] = (time.perf_counter() - t0) * 1000.0
            passed = outs[call.i_passed]
            pick = outs[call.i_pick] if call.i_pick is not None else np.zeros(len(passed), dtype=np.int64)
            macs[active] += call.macs_through[-1]
            stopped = passed | (index == len(calls) - 1)
            stops[active[stopped]] = call.start + np.asarray(call.scored)[pick[stopped]]
            preds[active[stopped]] = outs[call.i_preds][stopped, pick[stopped]]
            if call.i_logits is not None:  # the final call: rows at the walk's end are the last rung's input
                ended = stopped & (call.start + np.asarray(call.scored)[pick] == len(compiled.program.steps) - 1)
                for a, lg in zip(active[ended].tolist(), outs[call.i_logits][ended], strict=True):
                    final_logits[a] = lg
            keep = ~stopped
            active = active[keep]
            if not keep.all():  # compaction: the stopped rows leave every carried array
                carried = {name: value[keep] for name, value in carried.items()}
            for i, name in call.carry.items():
                carried[name] = outs[i][keep]
            if not len(active):
                break
        plan = compiled.program.plan
        lam, shown = self.policy.lam, self._shown_thresholds()
        for row, r in enumerate(ok_rows):
            if stops[row] < 0:
                continue
            sample = samples[r]
            d = Decision(sample_id=sample.sample_id, prediction=-1, system=self.system, label=sample.label,
                         timestamp_ns=sample.timestamp_ns, lam=lam, thresholds=shown)
            self._fill(d, compiled, int(stops[row]), int(preds[row]), int(macs[row]), plan)
            d.final_logits = final_logits.get(row)
            d.latency_ms.update(latency)
            d.latency_ms["policy"] = 0.0
            results[r] = d
