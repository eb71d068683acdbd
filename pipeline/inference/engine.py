"""The engine: one sample at a time through the policy, the incremental encoders and fusion.

``Engine.process(sample)`` asks the :class:`~scheduler.policy.Policy` what to do next, runs
one encoder step (up to the next exit) or the fusion step inside a power-meter window, shows
the exit's probabilities to the policy, and returns a :class:`~pipeline.messages.Decision` with
the order, exits, skipped and missing modalities, prediction, per-stage latency and energy (with
its source), lambda, thresholds and MACs. With a :class:`~scheduler.budget.BudgetController`
the measured energy of each sample updates lambda for the next one.

Fusion protocol: ``fuse(embeddings: dict[str, Tensor (B, D_m)], present: list[str]) -> logits
(B, C)`` (e.g. :class:`MaskedLateFusion`). A fusion module that offers ``fuse_exits(outputs:
dict[str, ExitOutput])`` instead (the cross-modal transformer in ``encoders.fusion``) is called
that way, and its fusion layers and kept token/head ratios go into the decision.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from exitflow.encoders.base import EarlyExitEncoder, ExitOutput
from exitflow.pipeline.config import BudgetConfig, Config, SchedulerConfig
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.inference.pricing import exit_path_macs
from exitflow.pipeline.messages import Decision, Sample
from exitflow.scheduler.budget import BudgetController
from exitflow.scheduler.policy import ActionKind, Policy, PolicySettings
from exitflow.scheduler.prior import PriorPolicy
from exitflow.scheduler.profile import Profile

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineError(ExitflowError):
    """The engine cannot run a sample (no encoder for a modality, missing payload, bad fusion)."""


class PowerMeterLike(Protocol):
    def begin_window(self, name: str) -> None: ...

    def end_window(self, name: str) -> Any: ...




def settings_from_config(profile: Profile, cfg: SchedulerConfig) -> PolicySettings:
    """The :class:`PolicySettings` the ``scheduler`` config section describes for ``profile``."""
    thresholds = dict.fromkeys(profile.modalities, cfg.threshold) if cfg.threshold is not None else {}
    return PolicySettings(
        lam=cfg.lam,
        cost_unit=cfg.cost_unit,
        ranking=cfg.ranking,
        exit_rule=cfg.exit_rule,
        thresholds={**thresholds, **cfg.thresholds},
        skip_negative=cfg.skip_negative,
        threshold_coupling=cfg.threshold_coupling,
        min_exit_prob=cfg.min_exit_prob,
        min_exit_accuracy=cfg.min_exit_accuracy,
        accuracy=cfg.accuracy,
    )


def policy_from_config(profile: Profile, cfg: SchedulerConfig) -> Policy:
    """A :class:`Policy` for ``profile`` with the ``scheduler`` config section applied (a
    :class:`~scheduler.prior.PriorPolicy` when ``scheduler.prior`` names a modality)."""
    if cfg.prior is not None:
        try:
            return PriorPolicy(profile, settings_from_config(profile, cfg), prior=cfg.prior, prior_exit=cfg.prior_exit)
        except ValueError as e:
            raise EngineError(f"scheduler.prior: {e}") from e
    return Policy(profile, settings_from_config(profile, cfg))


def budget_from_config(
    cfg: BudgetConfig, lam_ref: float, profile: Profile | None = None
) -> BudgetController | None:
    """The budget controller of the ``budget`` section (None for ``mode: off``).

    With a profile that carries energy, its cheapest first exit sets ``cheapest_mj``.
    """
    if cfg.mode == "off":
        return None
    return BudgetController(
        mj_per_sample=cfg.mj_per_sample if cfg.mode == "mj_per_sample" else None,
        power_w=cfg.power_w if cfg.mode == "power_w" else None,
        window_s=cfg.window_s,
        lam_ref=min(max(lam_ref, cfg.lam_min), cfg.lam_max),
        lam_min=cfg.lam_min,
        lam_max=cfg.lam_max,
        kp=cfg.kp,
        ki=cfg.ki,
        cheapest_mj=cheapest_plan_mj(profile, cfg.energy),
    )


def cheapest_plan_mj(profile: Profile | None, energy: str = "dynamic") -> float | None:
    """Energy of the cheapest plan (the cheapest first exit), when the profile carries energy of the
    kind the budget controls (``dynamic`` or ``total``, as ``exitflow profile`` records it)."""
    if profile is None or not profile.has_energy() or f"({energy} energy)" not in (profile.energy_source or ""):
        return None
    return min(profile.cumulative_costs(m, "mj")[0] for m in profile.modalities) or None


def device_input_adapter(device: torch.device) -> Callable[[str, Any], Any]:
    """:func:`default_input_adapter`, with tensors moved to ``device``."""

    def adapt(modality: str, payload: Any) -> Any:
        x = default_input_adapter(modality, payload)
        return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x

    return adapt


def resolve_device(name: str) -> torch.device:
    """``engine.device`` as a torch device; a CUDA device that is not there is an EngineError."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise EngineError(f"engine.device {name!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"engine.device is {name!r} but torch sees no CUDA GPU; set engine.device: cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineError(f"engine.device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise EngineError(f"engine.device {name!r} is not supported; use cpu or cuda[:N]")
    return device


def default_input_adapter(modality: str, payload: Any) -> Any:
    """numpy array -> float tensor with a batch axis of 1; a string -> a one-item list."""
    if isinstance(payload, str):
        return [payload]
    if isinstance(payload, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(payload)).float().unsqueeze(0)
    if isinstance(payload, torch.Tensor):
        return payload.unsqueeze(0)
    return payload


class Engine:
    """Runs samples through policy + encoders + fusion, measuring each step.

    Args:
        encoders: Modality -> incremental early-exit encoder (exit counts must match the profile).
        fusion: A fusion module (see the module docstring).
        policy: The per-sample policy.
        meter: A power meter with ``begin_window``/``end_window``, or None (no energy figures).
        budget: Optional budget controller; lambda follows it sample by sample.
        system: Name written into each decision.
        input_adapter: ``(modality, payload) -> encoder input``.
        budget_energy: What the budget controls: ``dynamic`` (attributable) or ``total`` energy.
        cheapest_mj: Energy of the cheapest plan (the profile's cheapest first exit), for a budget
            set while running.
    """

    def __init__(
        self,
        encoders: Mapping[str, EarlyExitEncoder],
        fusion: Any,
        policy: Policy,
        meter: PowerMeterLike | None = None,
        budget: BudgetController | None = None,
        system: str = "exitflow",
        input_adapter: Callable[[str, Any], Any] = default_input_adapter,
        budget_energy: str = "dynamic",
        cheapest_mj: float | None = None,
        step_windows: bool = False,
    ):
        if budget_energy not in ("dynamic", "total"):
            raise EngineError(f"budget_energy must be 'dynamic' or 'total', got {budget_energy!r}")
        for m, enc in encoders.items():
            if m in policy.num_exits and enc.num_exits != policy.num_exits[m]:
                raise EngineError(
                    f"encoder {m!r} has {enc.num_exits} exits, the exit profile {policy.num_exits[m]}; "
                    "re-run `exitflow profile` for these checkpoints"
                )
        absent = [m for m in policy.num_exits if m not in encoders]
        if absent:
            raise EngineError(f"the profile has modalities {absent} without an encoder; pass one for each")
        self.encoders = dict(encoders)
        self.fusion = fusion
        self.policy = policy
        self.meter = meter
        self.budget = budget
        self.system = system
        self.input_adapter = input_adapter
        self.budget_energy_kind = budget_energy
        self.cheapest_mj = cheapest_mj
        self.step_windows = step_windows  # a meter window per encoder step, else one per sample
        self._warned_total = False
        if budget is not None:
            policy.set_lambda(budget.lam)
            policy.set_cheapest_mode(budget.cheapest_mode)

    def _measure(self, name: str, fn: Callable[[], T], decision: Decision, energy: list[Any]) -> T:
        meter = self.meter if self.step_windows else None
        if meter is not None:
            meter.begin_window(name)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                result = fn()
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if meter is not None:
                energy.append(meter.end_window(name))
        decision.latency_ms[name] = elapsed_ms
        return result

    def _fuse(self, outputs: dict[str, ExitOutput], present: list[str], decision: Decision) -> torch.Tensor:
        if hasattr(self.fusion, "fuse_exits"):
            out = self.fusion.fuse_exits({m: outputs[m] for m in present})
            decision.fused_checks += 1
            decision.fusion_layers = {m: int(v[0]) for m, v in getattr(out, "exit_layers", {}).items()}
            if getattr(out, "kept_token_ratio", None) is not None:
                decision.kept_tokens = {"fusion": float(out.kept_token_ratio[0])}
            if getattr(out, "kept_head_ratio", None) is not None:
                decision.kept_heads = float(out.kept_head_ratio[0])
            decision.macs += int(out.macs[0]) if getattr(out, "macs", None) is not None else 0
            return out.logits  # (B, C)
        logits = self.fusion.fuse({m: outputs[m].embedding for m in present}, present)  # (B, C)
        decision.macs += int(getattr(self.fusion, "macs", 0))
        return logits.logits if hasattr(logits, "logits") else logits

    def process(self, sample: Sample) -> Decision:
        """Run one sample; returns its decision (prediction, what ran, latency, energy)."""
        total_start = time.perf_counter()
        missing = sorted(set(sample.missing) | {m for m in self.policy.num_exits if m not in sample.payloads})
        present = [m for m in sample.present() if m in self.policy.num_exits]
        decision = Decision(
            sample_id=sample.sample_id,
            prediction=-1,
            system=self.system,
            label=sample.label,
            timestamp_ns=sample.timestamp_ns,
            lam=self.policy.lam,
            thresholds=self.policy.thresholds,
        )
        if not present:
            # nothing this engine can encode (e.g. a text-only moment for an image+audio model):
            # a decision that says so, not an error that would stop a stream or a replay
            decision.missing = missing
            decision.latency_ms["total"] = (time.perf_counter() - total_start) * 1000.0
            log.warning("sample %s has none of the modalities %s; no prediction", sample.sample_id,
                        sorted(self.policy.num_exits))
            return decision
        sample_meter = None if self.step_windows else self.meter
        if sample_meter is not None:
            sample_meter.begin_window("sample")
        try:
            t0 = time.perf_counter()
            state = self.policy.start(present, missing)
            policy_s = time.perf_counter() - t0
            decision.order = list(state.plan.order)
            states: dict[str, Any] = {}
            outputs: dict[str, ExitOutput] = {}
            energy: list[Any] = []
            evaluated: dict[str, list[int]] = {}
            checked: list[tuple[tuple[tuple[str, int], ...], torch.Tensor]] = []  # fused checks: (exits, logits)
            t0 = time.perf_counter()
            action = self.policy.decide(state)
            policy_s += time.perf_counter() - t0
            while True:
                if action.kind is ActionKind.SKIP:
                    if action.modality is None:
                        raise EngineError(f"the policy skipped no modality ({action.reason}); a scheduler bug")
                    target = decision.missing if action.reason == "missing" else decision.skipped
                    target.append(action.modality)
                    t0 = time.perf_counter()
                    action = self.policy.decide(state)
                    policy_s += time.perf_counter() - t0
                elif action.kind is ActionKind.CONTINUE:
                    m, index = action.target()
                    enc = self.encoders[m]

                    def step(
                        m: str = m, enc: EarlyExitEncoder = enc, index: int = index
                    ) -> tuple[ExitOutput, list[float]]:
                        if m not in states:
                            states[m] = enc.start(self.input_adapter(m, sample.payloads[m]))
                        states[m].next_exit = index  # exits the policy leaves out: their heads never run
                        out = enc.step(states[m])
                        # the exit's class probabilities are part of the exit's output (its window)
                        return out, torch.softmax(out.logits[0].float(), dim=-1).tolist()  # C floats

                    out, probs = self._measure(f"{m}/{index}", step, decision, energy)
                    outputs[m] = out
                    evaluated.setdefault(m, []).append(out.exit_index)
                    t0 = time.perf_counter()
                    action = self.policy.advance(state, m, out.exit_index, probs)
                    policy_s += time.perf_counter() - t0
                elif action.kind is ActionKind.EXIT:
                    m, _ = action.target()
                    decision.prediction = int(outputs[m].logits[0].argmax())
                    decision.exited_by = m
                    break
                elif action.kind is ActionKind.CHECK:  # a fused early exit over the exits so far
                    fused = list(action.modalities)
                    fuse = functools.partial(self._fuse, outputs, fused, decision)
                    logits = self._measure(f"fusion/{len(checked)}", fuse, decision, energy)
                    checked.append((tuple((m, outputs[m].exit_index) for m in fused), logits))
                    t0 = time.perf_counter()
                    action = self.policy.advance_fusion(state, torch.softmax(logits[0].float(), dim=-1).tolist())
                    policy_s += time.perf_counter() - t0
                else:
                    fused = list(action.modalities)
                    key = tuple((m, outputs[m].exit_index) for m in fused)
                    if checked and checked[-1][0] == key:  # the check just run is this fusion: no second pass
                        logits = checked[-1][1]
                    else:
                        fuse = functools.partial(self._fuse, outputs, fused, decision)
                        logits = self._measure("fusion", fuse, decision, energy)
                    decision.prediction = int(logits[0].argmax())
                    decision.exited_by = "fusion"
                    if not state.fused_passed:  # the walk's end (no check passed): the last rung's input, (C,)
                        decision.final_logits = logits[0].detach().float().cpu().numpy()
                    break
        except BaseException:
            if sample_meter is not None:  # close the window so the meter is ready for the next sample
                sample_meter.end_window("sample")
            raise
        if sample_meter is not None:
            energy.append(sample_meter.end_window("sample"))
        decision.exits = {m: o.exit_index for m, o in outputs.items()}
        decision.exit_layers = {m: o.layer for m, o in outputs.items()}
        decision.macs += sum(self._encoder_macs(m, o, evaluated[m]) for m, o in outputs.items())
        self._record_energy(decision, energy)
        if self.budget is not None:
            # the controller sees the sample's time up to here; its update and the re-plan count as policy
            t0 = time.perf_counter()
            budget_step(self, self.budget, decision, t0 - total_start)
            policy_s += time.perf_counter() - t0
        decision.latency_ms["policy"] = policy_s * 1000.0
        decision.latency_ms["total"] = (time.perf_counter() - total_start) * 1000.0
        return decision

    def _encoder_macs(self, modality: str, last: ExitOutput, evaluated: list[int], row: int = 0) -> int:
        """MACs of what ran for row ``row`` of ``last`` (:func:`exit_path_macs`: text at its real token count)."""
        return exit_path_macs(self.encoders[modality], last, evaluated, row)

    @staticmethod
    def _record_energy(decision: Decision, energy: list[Any]) -> None:
        if not energy:
            return
        sources = sorted({str(m.source) for m in energy})
        decision.energy_source = "+".join(sources)
        decision.estimated = any(bool(m.estimated) for m in energy)
        decision.energy_mj = _sum_or_none([m.energy_mj for m in energy])
        decision.dynamic_energy_mj = _sum_or_none([getattr(m, "dynamic_energy_mj", None) for m in energy])
        decision.idle_energy_mj = _sum_or_none([getattr(m, "idle_energy_mj", None) for m in energy])

    def budget_energy(self, decision: Decision) -> float | None:
        """The energy the budget controls: attributable (``dynamic``, the default) or total.

        A measured meter that was never idle-calibrated has no dynamic part: the controller then
        falls back to total energy and says so once.
        """
        if self.budget_energy_kind == "dynamic":
            if decision.dynamic_energy_mj is not None:
                return decision.dynamic_energy_mj
            if not self._warned_total:
                log.warning("the meter gives no attributable energy (no idle floor); the budget controls total energy")
                self._warned_total = True
        return decision.energy_mj

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Set, change or remove (both None) the energy budget of a running engine."""
        if mj_per_sample is None and power_w is None:
            self.budget = None
            self.policy.set_cheapest_mode(False)
            return {"mode": "off"}
        if self.budget is None:
            self.budget = BudgetController(
                mj_per_sample=mj_per_sample, power_w=power_w, lam_ref=self.policy.lam,
                cheapest_mj=self.cheapest_mj,
            )
        else:
            self.budget.set_budget(mj_per_sample=mj_per_sample, power_w=power_w)
        return {"mj_per_sample": mj_per_sample, "power_w": power_w, "energy": self.budget_energy_kind}


def budget_step(engine: Any, budget: BudgetController, decision: Decision, duration_s: float) -> None:
    """One update of ``budget`` with ``decision``'s energy as ``engine`` counts it for the budget
    (``engine.budget_energy``; none: no update) over ``duration_s``; lambda and cheapest-exit mode follow.
    The one budget step of every engine and of the wrappers whose extra work (a shadow, the last rung) is in
    the sample's energy."""
    controlled = engine.budget_energy(decision)
    if controlled is None:
        return
    engine.policy.set_lambda(budget.update(controlled, duration_s))
    engine.policy.set_cheapest_mode(budget.cheapest_mode)
    if budget.cheapest_mode:
        decision.budget_note = "budget below the cheapest plan: running the cheapest exit only"


def _sum_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(sum(v for v in values if v is not None))


def apply_engine_settings(cfg: Config) -> None:
    """Set torch's intra-op threads for inference from ``engine.num_threads`` (0 leaves torch's default)."""
    if cfg.engine.num_threads:
        torch.set_num_threads(cfg.engine.num_threads)
