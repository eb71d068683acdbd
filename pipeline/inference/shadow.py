"""Online self-recalibration around the engine: a shadow full path on a seeded share of samples.

:class:`ShadowRecalibration` wraps an ``exitflow`` :class:`~pipeline.inference.adaptive_systems.EngineSystem`.
For each sample it asks the :class:`~scheduler.recalibration.OnlineRecalibrator` whether this sample is
shadowed (a seeded draw over the sample counter: a replay makes the same choices); the engine answers as
usual; on a shadowed sample the full path (``full``: every modality to its last exit, fused) also runs,
and the controller learns whether the early answer disagreed with it and moves every threshold of the
policy by one shift (:meth:`Policy.set_thresholds`). When the engine's walk already ran the full path
the comparison is free (no second run).

What the shadow costs is part of the sample: its MACs, time and energy are added to the decision's
``macs``, ``latency_ms`` (``shadow`` and ``total``) and ``energy_mj`` (also ``shadow_macs`` and
``shadow_energy_mj`` apart), and the engine's budget controller is updated with the sample's energy
*including* the shadow (on a shadowed sample the wrapper performs the engine's budget step itself).
While a budget is set the budget owns the thresholds: the controller keeps measuring the disagreement but
holds its shift (two controllers on one knob would fight; ``status()["held_by_budget"]`` says so) and
shadows at the steady share even in warm-up (the warm-up share would spend the budget). In
cheapest-exit mode no sample is shadowed (the budget is below the cheapest exit already).

``status()`` is the state the live view, ``/status``, the metrics and recordings show;
:func:`with_recalibration` builds the wrapped system the config describes; :func:`bench_systems` gives
bench its two rows, ``exitflow`` (online) and ``exitflow-fixed`` (frozen thresholds).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from exitflow.pipeline.config import Config, RecalibrationConfig
from exitflow.pipeline.errors import ConfigError
from exitflow.pipeline.inference.energy_windows import measure_extra
from exitflow.pipeline.inference.engine import budget_step
from exitflow.pipeline.messages import Decision, Sample
from exitflow.scheduler.recalibration import OnlineRecalibrator, RecalibrationSettings

FIXED_SUFFIX = "-fixed"  # bench's row with frozen thresholds: "exitflow-fixed"


def settings_from_config(cfg: RecalibrationConfig) -> RecalibrationSettings:
    """The controller's settings of the ``recalibration`` section (ConfigError on an inconsistent pair)."""
    try:
        return RecalibrationSettings(
            target_disagreement=cfg.target_disagreement, shadow_share=cfg.shadow_share,
            warmup_samples=cfg.warmup_samples, warmup_share=cfg.warmup_share, step=cfg.step,
            warmup_step=cfg.warmup_step, min_shift=cfg.min_shift, max_shift=cfg.max_shift, seed=cfg.seed,
        )
    except ValueError as e:
        raise ConfigError([f"recalibration: {e}"]) from e


class ShadowRecalibration:
    """``exitflow`` with online self-recalibration (module doc).

    Args:
        system: The engine-backed system (``AdaptiveParts.exitflow()``); its policy's thresholds move.
        full: The full path (``AdaptiveParts.full()``): the shadow's answer is the reference.
        controller: The recalibrator, built on the policy's calibrated (base) thresholds.
        name: The system name in decisions and bench rows (default: the wrapped system's).

    Raises:
        ValueError: the controller's thresholds name keys the policy does not have.
    """

    def __init__(self, system: Any, full: Any, controller: OnlineRecalibrator, name: str | None = None):
        self.system, self.full, self.controller = system, full, controller
        self.engine = system.engine
        self.policy = self.engine.policy
        self.name = name or system.name
        self.modalities = system.modalities
        self.shadow_macs_total = 0
        self.shadow_ms_total = 0.0
        self.held_by_budget = 0  # shadowed samples observed while a budget held the thresholds
        self._batcher: Any = None
        self._skip_negative = self.policy.settings.skip_negative
        self.policy.set_thresholds(controller.thresholds)

    def process(self, sample: Sample) -> Decision:
        """Run one sample, its shadow when drawn; returns the decision (shadow cost included)."""
        shadow = self.controller.begin_sample(held=self.engine.budget is not None) and not self.policy.cheapest_mode
        if not shadow:
            decision = self.system.process(sample)
            decision.system = self.name
            return decision
        start = time.perf_counter()
        budget = self.engine.budget
        self.engine.budget = None  # the budget step runs below, with the shadow's energy in it
        try:
            decision = self.system.process(sample)
        finally:
            self.engine.budget = budget
        decision.system = self.name
        if decision.prediction < 0:  # no modality the engine knows: nothing to compare
            return decision
        if self._ran_full_path(decision):
            self._attach(decision, decision.prediction, 0, 0.0, None, None)
        else:
            self._attach(decision, *self._run_full(sample))
        self._observe(decision, held=budget is not None)
        if budget is not None:
            self._budget_step(budget, decision, time.perf_counter() - start)
        return decision

    def process_batch(self, samples: Sequence[Sample]) -> list[Decision | Exception]:
        """Decisions for ``samples`` in order (a failed sample gets its exception), as the inner engine
        batches them; the shadowed ones' full paths run as one batch after it. Thresholds move after the
        batch (the batch ran with the thresholds it started with); with a budget, every sample's budget
        step runs here with its share of the batch time, shadows included."""
        budget = self.engine.budget
        shadows = [self.controller.begin_sample(held=budget is not None) and not self.policy.cheapest_mode
                   for _ in samples]
        start = time.perf_counter()
        self.engine.budget = None if any(shadows) else budget
        try:
            results = list(self._inner_batch().process_batch(samples))
        finally:
            self.engine.budget = budget
        shadowed = {i: r for i, (r, s) in enumerate(zip(results, shadows, strict=True))
                    if s and isinstance(r, Decision) and r.prediction >= 0}
        to_run = [i for i, d in shadowed.items() if not self._ran_full_path(d)]
        for i, d in shadowed.items():
            if i not in to_run:
                self._attach(d, d.prediction, 0, 0.0, None, None)
        if to_run:
            for i, shadow in zip(to_run, self._run_full_batch([samples[i] for i in to_run]), strict=True):
                self._attach(shadowed[i], *shadow)
        for d in shadowed.values():
            self._observe(d, held=budget is not None)
        done = [r for r in results if isinstance(r, Decision)]
        for d in done:
            d.system = self.name
        if budget is not None and any(shadows):
            elapsed = time.perf_counter() - start
            for d in done:
                self._budget_step(budget, d, elapsed / len(done))
        return results

    def _inner_batch(self) -> Any:
        if self._batcher is None:
            from exitflow.pipeline.inference.batch_engine import as_batch_engine

            self._batcher = as_batch_engine(self.system)
        return self._batcher

    def _attach(self, decision: Decision, reference: int, macs: int, ms: float, mj: float | None,
                dyn: float | None) -> None:
        """Put the shadow's answer and cost into ``decision`` (cost added to its totals)."""
        decision.shadow = True
        decision.shadow_prediction = reference
        decision.shadow_macs = macs
        decision.macs += macs
        decision.latency_ms["shadow"] = ms
        decision.latency_ms["total"] = decision.latency_ms.get("total", 0.0) + ms
        if mj is not None:
            decision.shadow_energy_mj = mj
            if decision.energy_mj is not None:
                decision.energy_mj += mj
            if decision.dynamic_energy_mj is not None and dyn is not None:
                decision.dynamic_energy_mj += dyn
        self.shadow_macs_total += macs
        self.shadow_ms_total += ms

    def _observe(self, decision: Decision, held: bool) -> None:
        """Show the controller whether the early answer disagreed; move the policy's thresholds."""
        disagreed = decision.prediction != decision.shadow_prediction
        if held:
            self.controller.observe(disagreed, hold=True)
            self.held_by_budget += 1
        else:
            thresholds = self.controller.observe(disagreed)
            # at the floor the thresholds say "never exit early": the walk must then be the full path,
            # so no modality is skipped by utility either (the guarantee's premise); plans are re-made
            full_walk = self.controller.shift <= self.controller.settings.min_shift
            epoch = self.policy.plan_epoch
            self.policy.set_skip_negative(self._skip_negative and not full_walk)
            if self.policy.plan_epoch != epoch:
                self._replan_engine()
            self.policy.set_thresholds(thresholds)  # a new dict: engines re-plan on it
        decision.recalibration = self.compact_status()

    def _replan_engine(self) -> None:
        """Drop the engine's cached walk programs after the policy's plans changed (skipping on/off).

        ``engine.invalidate_plans()`` when the engine has it; else the compiled fast engine's caches by
        name (a stopgap until it keys its programs on ``policy.plan_epoch``)."""
        invalidate = getattr(self.engine, "invalidate_plans", None)
        if invalidate is not None:
            invalidate()
            return
        for name in ("_programs", "_all", "_compiled", "_stops"):
            cache = getattr(self.engine, name, None)
            if isinstance(cache, dict):
                cache.clear()
        if hasattr(self.engine, "_last"):
            self.engine._last = None

    def compact_status(self) -> dict[str, Any]:
        """The few figures a decision carries to the live views, ``/status``, metrics and recordings."""
        c = self.controller
        return {
            "target_disagreement": c.settings.target_disagreement,
            "measured_disagreement": c.disagreements / c.shadowed if c.shadowed else None,
            "shadow_share": c.current_share,
            "shift": c.shift,
            "thresholds": c.thresholds,
            "shadowed": c.shadowed,
            "disagreements": c.disagreements,
            "held_by_budget": self.engine.budget is not None,
        }

    def _ran_full_path(self, decision: Decision) -> bool:
        """Whether the walk gave the full path's answer: every modality to its last exit and fused, and with a
        last rung, the rung's mix too (a full-path answer that passed its check did not run the rung)."""
        if getattr(self.system, "rung", None) is not None:
            return decision.rung is not None
        last = {m: n - 1 for m, n in self.policy.num_exits.items()}
        return (decision.exited_by == "fusion" and not decision.skipped and not decision.missing
                and decision.exits == last)

    def _run_full(self, sample: Sample) -> tuple[int, int, float, float | None, float | None]:
        """(prediction, MACs, ms, energy mJ, attributable mJ) of the full path on ``sample``, its energy measured
        as the engine measures its own samples (:func:`~pipeline.inference.energy_windows.measure_extra`)."""
        full, elapsed_s, mj, dyn = measure_extra(self.engine, "shadow", lambda: self.full.process(sample))
        return full.prediction, int(full.macs), elapsed_s * 1000.0, mj, dyn

    def _run_full_batch(self, samples: list[Sample]) -> list[tuple[int, int, float, float | None, float | None]]:
        """:meth:`_run_full` for several samples in one batch of the full path (time and energy shared evenly)."""
        batch = getattr(self.full, "process_batch", None)
        if batch is None or len(samples) == 1:
            return [self._run_full(s) for s in samples]
        outs, elapsed_s, mj, dyn = measure_extra(self.engine, "shadow", lambda: batch(samples))
        n = len(samples)
        share = (elapsed_s * 1000.0 / n, None if mj is None else mj / n, None if dyn is None else dyn / n)
        results = []
        for sample, out in zip(samples, outs, strict=True):
            if isinstance(out, Exception):  # this sample's full path failed alone: run it by itself
                results.append(self._run_full(sample))
            else:
                results.append((out.prediction, int(out.macs), *share))
        return results

    def _budget_step(self, budget: Any, decision: Decision, duration_s: float) -> None:
        """The engine's budget step (``Engine.process``) for a sample whose energy includes its shadow."""
        budget_step(self.engine, budget, decision, duration_s)

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """As :meth:`EngineSystem.set_budget` (the live view's budget commands reach the engine)."""
        return self.system.set_budget(mj_per_sample=mj_per_sample, power_w=power_w)

    def status(self) -> dict[str, Any]:
        """Recalibration state (JSON-safe): target, measured disagreement, thresholds, shadow share, cost."""
        state = self.controller.status()
        state.update({
            "enabled": True,
            "thresholds_in_force": self.policy.thresholds,  # after the budget's lambda coupling
            "held_by_budget": self.engine.budget is not None,
            "shadow_macs_total": self.shadow_macs_total,
            "shadow_ms_total": self.shadow_ms_total,
        })
        return state


def with_recalibration(cfg: Config, parts: Any, meter: Any = None, name: str = "exitflow") -> Any:
    """``exitflow`` as the config describes it: wrapped in :class:`ShadowRecalibration` when
    ``recalibration.enabled`` (the default), else the plain engine system.

    Args:
        cfg: The configuration (its ``recalibration`` section).
        parts: The loaded :class:`~pipeline.inference.adaptive_systems.AdaptiveParts`.
        meter: The power meter (the shadow is measured in its own window).
        name: The system name.
    """
    return recalibrated(cfg, parts, parts.exitflow(meter=meter, name=name))


def recalibrated(cfg: Config, parts: Any, system: Any) -> Any:
    """``system`` (an engine-backed ``exitflow`` built from ``parts``, e.g. with a budget) wrapped in
    :class:`ShadowRecalibration` when ``recalibration.enabled``, else ``system`` itself."""
    if not cfg.recalibration.enabled:
        return system
    policy = system.engine.policy
    controller = OnlineRecalibrator(policy.base_thresholds, policy.exit_rule, settings_from_config(cfg.recalibration))
    return ShadowRecalibration(system, parts.full(), controller, name=system.name)


def bench_systems(parts: Any, meter: Any = None) -> dict[str, Any]:
    """Bench's two rows: ``exitflow`` (online recalibration on, whatever the config says) and
    ``exitflow-fixed`` (the same model, frozen calibrated thresholds). Build them after any warm-up
    run so the measured run starts from the calibrated thresholds."""
    import dataclasses

    cfg = parts.cfg
    online_cfg = dataclasses.replace(cfg, recalibration=dataclasses.replace(cfg.recalibration, enabled=True))
    return {
        "exitflow": with_recalibration(online_cfg, parts, meter, name="exitflow"),
        "exitflow" + FIXED_SUFFIX: parts.exitflow(meter=meter, name="exitflow" + FIXED_SUFFIX),
    }


def shadow_columns(decisions: Sequence[Decision], system: Any = None) -> dict[str, Any]:
    """Bench/replay columns of a run: the share of samples shadowed, the measured disagreement of the
    shadowed samples, the MACs the shadow added per sample and, with a wrapped system, its final state."""
    shadowed = [d for d in decisions if d.shadow]
    n = len(decisions)
    row: dict[str, Any] = {
        "shadow_share": len(shadowed) / n if n else 0.0,
        "disagreement": (sum(d.prediction != d.shadow_prediction for d in shadowed) / len(shadowed)
                         if shadowed else None),
        "shadow_macs_per_sample": sum(d.shadow_macs for d in decisions) / n if n else 0.0,
    }
    if isinstance(system, ShadowRecalibration):
        state = system.status()
        row.update({"target_disagreement": state["target_disagreement"], "final_shift": state["shift"],
                    "final_thresholds": state["thresholds"]})
    return row


def recalibrate_stream(system: ShadowRecalibration, samples: Iterable[Sample]) -> dict[str, Any]:
    """Run ``samples`` through ``system`` in order; the run's summary and the controller's final state.

    Returns:
        ``{"n", "accuracy" (None without labels), "macs_per_sample", "ms_per_sample", "shadow_share",
        "disagreement", "shadow_macs_per_sample", "status"}``.
    """
    decisions = [system.process(s) for s in samples]
    n = len(decisions)
    if n == 0:
        raise ValueError("no samples to recalibrate on; give a split with samples (or a larger --limit)")
    labelled = [d for d in decisions if d.label is not None]
    return {
        "n": n,
        "accuracy": sum(d.prediction == d.label for d in labelled) / len(labelled) if labelled else None,
        "macs_per_sample": sum(d.macs for d in decisions) / n,
        "ms_per_sample": sum(d.latency_ms.get("total", 0.0) for d in decisions) / n,
        **shadow_columns(decisions),
        "status": system.status(),
    }


def exitflow_engine(cfg: Config) -> Any:
    """``exitflow`` for a live stream as the config describes it (``stream.engine:
    exitflow.pipeline.inference.shadow:exitflow_engine``): the data set's parts, the configured meter and
    online recalibration when ``recalibration.enabled``."""
    from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
    from exitflow.pipeline.meters import open_meter, with_trace

    return with_recalibration(cfg, AdaptiveParts(cfg, cfg.data.dataset), with_trace(cfg, open_meter(cfg)))
