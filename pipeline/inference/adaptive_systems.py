"""Systems built on the early-exit encoders: ``full``, ``static``, ``rexit`` and ``exitflow``.

- ``full``: every modality to its last layer (final head only, no internal heads) + fusion.
- ``static``: every modality truncated at a fixed exit (only that exit's head runs), fused by the
  exit grid's head for those exits (CNN family) or by averaging the modalities' probabilities. The bench picks the truncation whose MACs match
  ``exitflow``'s.
- ``rexit``: MMExit's RExit: exits by threshold in a random modality order, no UoE.
- ``exitflow``: the UoE scheduler (phi order, modality skipping, early exits, fusion exit) with
  the configured power meter and, when ``budget.mode`` is set, the energy-budget controller.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from exitflow.encoders.base import EarlyExitEncoder, ExitOutput
from exitflow.encoders.checkpoint import file_sha256
from exitflow.encoders.cnn import CNNEarlyExitEncoder
from exitflow.encoders.fusion_grid import ExitGridFusion
from exitflow.pipeline.artifacts import baseline_dataset
from exitflow.pipeline.config import Config
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.inference.backends import open_backend
from exitflow.pipeline.inference.batch_engine import as_batch_engine
from exitflow.pipeline.inference.compiled_systems import CompiledTruncation, compiled_truncation
from exitflow.pipeline.inference.compiled_walk import cnn_family
from exitflow.pipeline.inference.engine import (
    Engine,
    EngineError,
    budget_from_config,
    budget_step,
    cheapest_plan_mj,
    default_input_adapter,
    device_input_adapter,
    policy_from_config,
    resolve_device,
    settings_from_config,
)
from exitflow.pipeline.inference.fast_engine import FastEngine
from exitflow.pipeline.inference.last_rung import LastRung, StrongestPath, strongest_path
from exitflow.pipeline.inference.loading import (
    load_baseline,
    load_dataset_profile,
    load_encoders,
    load_fusion,
    rung_weights,
)
from exitflow.pipeline.inference.pricing import row_tokens, truncated_macs
from exitflow.pipeline.messages import Decision, Sample
from exitflow.scheduler.policy import RandomOrderPolicy
from exitflow.scheduler.profile import Profile
from exitflow.scheduler.program import STATIC_RULES, timed_profile, walk_program

log = logging.getLogger(__name__)


class TruncatedSystem:
    """Each modality runs to a fixed exit; fused by the fusion exit or by averaging probabilities."""

    def __init__(
        self, name: str, encoders: dict[str, EarlyExitEncoder], exits: dict[str, int], fusion: Any = None,
        input_adapter: Any = default_input_adapter,
    ):
        for m, k in exits.items():
            if not 0 <= k < encoders[m].num_exits:
                raise ExitflowError(f"{name}: exit {k} of {m} does not exist (it has {encoders[m].num_exits})")
        self.name, self.encoders, self.exits, self.fusion = name, encoders, dict(exits), fusion
        self.input_adapter = input_adapter
        self.modalities = tuple(exits)
        self.fusion_macs = int(getattr(fusion, "macs", 0)) if fusion is not None else 0
        # per modality at the encoder's reference input; text is priced per sample at its real tokens (_row_macs)
        self.encoder_macs = {m: truncated_macs(encoders[m], k) for m, k in exits.items()}
        self.macs = sum(self.encoder_macs.values()) + self.fusion_macs

    def _row_macs(self, modality: str, out: ExitOutput, row: int = 0) -> int:
        """MACs of ``modality`` for row ``row`` of its exit output: fixed, or text at that sample's real tokens."""
        tokens = row_tokens(out, row)
        if tokens is None:
            return self.encoder_macs[modality]
        return truncated_macs(self.encoders[modality], self.exits[modality], tokens)

    @torch.inference_mode()
    def process(self, sample: Sample) -> Decision:
        start = time.perf_counter()
        present = [m for m in self.modalities if m in sample.payloads and m not in sample.missing]
        if not present:
            raise ExitflowError(f"sample {sample.sample_id} has none of {self.modalities}")
        outs = {}
        for m in present:
            enc = self.encoders[m]
            state = enc.start(self.input_adapter(m, sample.payloads[m]))
            state.next_exit = self.exits[m]  # jump: only this exit's head runs
            outs[m] = enc.step(state)
        fusion_macs = self.fusion_macs
        if self.fusion is not None and hasattr(self.fusion, "fuse_exits"):  # transformer: MACs vary per sample
            fused = self.fusion.fuse_exits({m: outs[m] for m in present})
            probs, fusion_macs = torch.softmax(fused.logits, dim=-1), int(fused.macs[0])
        elif self.fusion is not None:
            logits = self.fusion({m: outs[m].embedding for m in present}, present)  # (1, C)
            probs = torch.softmax(logits, dim=-1)
        else:
            probs = torch.stack([torch.softmax(outs[m].logits, dim=-1) for m in present]).mean(dim=0)  # (1, C)
        latency_ms = (time.perf_counter() - start) * 1000.0
        macs = sum(self._row_macs(m, outs[m]) for m in present) + fusion_macs
        return Decision(
            sample_id=sample.sample_id, prediction=int(probs[0].argmax()), label=sample.label, system=self.name,
            order=present, exits={m: self.exits[m] for m in present},
            exit_layers={m: outs[m].layer for m in present},
            missing=[m for m in self.modalities if m not in present],
            macs=macs,
            latency_ms={"total": latency_ms}, timestamp_ns=sample.timestamp_ns,
        )


    @torch.inference_mode()
    def process_batch(self, samples: list[Sample]) -> list[Decision | Exception]:
        """The batch through each encoder at once (eager); every sample needs every modality."""
        start = time.perf_counter()
        try:
            inputs = {m: torch.cat([self.input_adapter(m, s.payloads[m]) for s in samples]) for m in self.modalities}
        except Exception:  # a bad or missing payload: sample by sample, each with its own error
            return [self._safe(s) for s in samples]
        outs = {}
        for m, x in inputs.items():
            state = self.encoders[m].start(x)
            state.next_exit = self.exits[m]
            outs[m] = self.encoders[m].step(state)
        fusion_macs = [self.fusion_macs] * len(samples)
        if self.fusion is not None and hasattr(self.fusion, "fuse_exits"):  # transformer: MACs vary per sample
            fused = self.fusion.fuse_exits(outs)
            logits, fusion_macs = fused.logits, [int(v) for v in fused.macs.tolist()]
        elif self.fusion is not None:
            logits = self.fusion({m: o.embedding for m, o in outs.items()}, list(outs))
        else:
            logits = torch.stack([torch.softmax(o.logits, dim=-1) for o in outs.values()]).mean(dim=0)
        preds = logits.argmax(dim=-1).tolist()
        macs = [sum(self._row_macs(m, o, r) for m, o in outs.items()) + fusion_macs[r] for r in range(len(samples))]
        ms = (time.perf_counter() - start) * 1000.0
        return [Decision(sample_id=s.sample_id, prediction=p, label=s.label, system=self.name, order=list(self.modalities),
                         exits=dict(self.exits), macs=n, latency_ms={"total": ms}, timestamp_ns=s.timestamp_ns)
                for s, p, n in zip(samples, preds, macs, strict=True)]

    def _safe(self, sample: Sample) -> Decision | Exception:
        try:
            return self.process(sample)
        except Exception as e:
            return e


class EngineSystem:
    """An :class:`Engine` under a system name (``exitflow`` or ``rexit``), with the last rung behind its walk
    when the profile holds one (:mod:`pipeline.inference.last_rung`)."""

    def __init__(self, name: str, engine: Engine | FastEngine, modalities: tuple[str, ...],
                 rung: LastRung | None = None):
        self.name, self.engine, self.modalities, self.rung = name, engine, modalities, rung
        self._batcher: Any = None

    def process(self, sample: Sample) -> Decision:
        if self.rung is None:
            return self.engine.process(sample)
        budget = self.engine.budget  # the budget step runs after the rung, with the rung's energy in it
        self.engine.budget = None
        start = time.perf_counter()
        try:
            decision = self.engine.process(sample)
        finally:
            self.engine.budget = budget
        self.rung.apply([(sample, decision)], self.engine)
        if budget is not None and decision.prediction >= 0:
            self._budget_step(decision, time.perf_counter() - start)
        return decision

    def process_batch(self, samples: Sequence[Sample]) -> list[Decision | Exception]:
        """The engine's batch (compacted on the fast path), then the rung over the escalated samples at once."""
        if self._batcher is None:
            self._batcher = as_batch_engine(self.engine)
        results = list(self._batcher.process_batch(samples))
        if self.rung is not None:
            self.rung.apply([(s, r) for s, r in zip(samples, results, strict=True) if isinstance(r, Decision)],
                            self.engine)
        return results

    def _budget_step(self, decision: Decision, duration_s: float) -> None:
        """The engine's budget update for a sample whose energy includes the rung's."""
        if self.engine.budget is not None:
            budget_step(self.engine, self.engine.budget, decision, duration_s)

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> dict[str, Any]:
        """Set, change or (both None) remove the energy budget, also on an engine started without one."""
        return self.engine.set_budget(mj_per_sample=mj_per_sample, power_w=power_w)


class AdaptiveParts:
    """Encoders, fusion and profile of one data set, loaded once and shared by every system."""

    def __init__(self, cfg: Config, dataset: str):
        from exitflow.pipeline.inference.engine import apply_engine_settings

        apply_engine_settings(cfg)
        self.cfg, self.dataset = cfg, dataset
        self.device = resolve_device(cfg.engine.device)
        self.encoders = {m: enc.to(self.device) for m, enc in load_encoders(cfg, dataset).items()}
        self.modalities = tuple(self.encoders)  # the data set's order (a bundle's: engine.bundle)
        for enc in self.encoders.values():
            if isinstance(enc, CNNEarlyExitEncoder):
                enc.fold_batchnorm()  # inference only: BatchNorm folded into the convolutions
        self.fusion = load_fusion(cfg, dataset).to(self.device)
        self.profile = load_dataset_profile(cfg, dataset)
        self.input_adapter = device_input_adapter(self.device)
        reason = self.fast_path_refusal()
        if cfg.engine.backend == "onnxruntime" and reason is not None:
            log.warning("engine.backend onnxruntime: %s; running the eager torch engine instead", reason)
        self.backend = open_backend("onnxruntime", cfg.engine.num_threads) if reason is None else None
        self.backend_name = "onnxruntime" if self.backend is not None else "torch"
        self.step_costs: dict[str, Any] = {}  # the fast path's step costs, measured once, shared by its engines
        self.rung = self._load_rung()

    def _load_rung(self) -> LastRung | None:
        """The profile's last rung (None: ``scheduler.last_rung: none``, no rung calibrated, or not the CNN family)."""
        chosen = self.profile.rung
        if self.cfg.scheduler.last_rung == "none" or not chosen:
            return None
        try:
            cnn, grid = cnn_family(self.encoders, self.fusion)
        except EngineError:
            grid = None
        if grid is None or self.device.type != "cpu":
            log.warning("the profile's last rung runs behind the CNN family's exit grid on the CPU; left out here")
            return None
        name = str(chosen["model"])
        weights = rung_weights(self.cfg, name, baseline_dataset(self.dataset, name))
        if chosen.get("sha256") and file_sha256(weights) != chosen["sha256"]:
            raise ExitflowError(f"the exit profile's last rung was calibrated for other {name} weights than "
                                f"{weights}; re-run `exitflow calibrate` (or set scheduler.last_rung: none)")
        model = load_baseline(self.cfg, name, baseline_dataset(self.dataset, name))
        rule = self.cfg.scheduler.exit_rule or self.profile.exit_rule
        return LastRung(model, float(chosen["weight"]), name, {m: e.num_exits - 1 for m, e in cnn.items()}, rule,
                        self.backend)

    def fast_path_refusal(self) -> str | None:
        """Why the compiled fast path cannot run these parts (None: it can); ``engine.backend: torch`` is a reason."""
        cfg = self.cfg
        if cfg.engine.backend != "onnxruntime":
            return "engine.backend is torch"
        if self.device.type != "cpu":
            return f"engine.device is {cfg.engine.device} (the onnxruntime build here runs on the CPU)"
        if cfg.engine.step_windows:
            return "engine.step_windows measures every eager step"
        if cfg.scheduler.prior is not None:
            return "scheduler.prior weighs exits on the eager walk (the compiled walk has no prior)"
        if not all(isinstance(e, CNNEarlyExitEncoder) for e in self.encoders.values()):
            return "the compiled walk runs the CNN family only"
        if not isinstance(self.fusion, ExitGridFusion):
            return f"the compiled walk fuses with the exit grid, not {type(self.fusion).__name__}"
        rule = self.cfg.scheduler.exit_rule or self.profile.exit_rule
        if rule not in STATIC_RULES:
            return f"exit rule {rule!r} has no static walk"
        return None

    def timed_profile(self) -> Profile:
        """The profile with every exit's and fused step's time measured on the fast path (``cost_unit: ms``):
        UoE then orders and skips modalities by what they cost on this backend, not by MACs."""
        if self.backend is None:
            raise ExitflowError(f"scheduler.cost_unit ms needs the fast path's measured step times, but "
                                f"{self.fast_path_refusal()}; use cost_unit macs or engine.backend: onnxruntime")
        sched = dataclasses.replace(self.cfg.scheduler, cost_unit="macs")
        probe = FastEngine(self.encoders, self.fusion, policy_from_config(self.profile, sched), self.backend,
                           step_costs=self.step_costs)
        program = walk_program(probe.policy, self.modalities)
        return timed_profile(self.profile, program, probe.measured_step_ms(program), probe.call_ms())

    def full(self, eager: bool = False) -> TruncatedSystem | CompiledTruncation | StrongestPath:
        """Every modality to its last exit, and the last rung behind it when there is one (the strongest path);
        on the compiled path unless ``eager`` (the reference engine's backend, e.g. as the yardstick of an
        energy budget, which runs there)."""
        last = {m: enc.num_exits - 1 for m, enc in self.encoders.items()}
        cnn: TruncatedSystem | CompiledTruncation
        if self.backend is not None and isinstance(self.fusion, ExitGridFusion) and not eager:
            cnn = compiled_truncation("full", self.encoders, self.fusion, last, self.backend)
        else:
            cnn = TruncatedSystem("full", self.encoders, last, self.fusion, self.input_adapter)
        if self.rung is None:
            return cnn
        encoders, grid = cnn_family(self.encoders, self.fusion)
        if grid is None:  # a rung loads only behind the exit grid (_load_rung)
            return cnn
        return strongest_path(cnn, encoders, grid, self.rung, None if eager else self.backend)

    def static(self, exits: dict[str, int], name: str = "static") -> TruncatedSystem | CompiledTruncation:
        """A fixed truncation; fused by the exit grid's head for those exits (CNN family), else by
        averaging the modalities' probabilities (the other fusion exits are trained on last exits only)."""
        fusion = self.fusion if isinstance(self.fusion, ExitGridFusion) else None
        if self.backend is not None and fusion is not None:
            return compiled_truncation(name, self.encoders, fusion, exits, self.backend)
        return TruncatedSystem(name, self.encoders, exits, fusion, input_adapter=self.input_adapter)

    def exitflow(
        self, meter: Any = None, lam: float | None = None, budget: bool = True, budget_mj: float | None = None,
        name: str = "exitflow", threshold: float | None = None,
    ) -> EngineSystem:
        """The UoE-scheduled system; ``budget_mj``/``threshold`` override the config's."""
        sched = self.cfg.scheduler
        if threshold is not None:
            sched = dataclasses.replace(sched, threshold=threshold, thresholds={})
        policy = policy_from_config(self.timed_profile() if sched.cost_unit == "ms" else self.profile, sched)
        if lam is not None:
            policy.set_lambda(lam)
        budget_cfg = self.cfg.budget
        if budget_mj is not None:
            budget_cfg = dataclasses.replace(budget_cfg, mode="mj_per_sample", mj_per_sample=budget_mj)
        controller = budget_from_config(budget_cfg, policy.lam, self.profile) if budget else None
        cheapest_mj = cheapest_plan_mj(self.profile, self.cfg.budget.energy)
        engine: Engine
        # An energy budget steers on every sample's own meter window. The compiled path's samples (< 0.1 ms)
        # are shorter than the meter resolves: measured there, the controller drove lambda to its floor
        # (docs/fast_path.md). So a system built with a budget runs on the eager reference engine.
        if self.backend is not None and controller is None:
            engine = FastEngine(self.encoders, self.fusion, policy, self.backend, meter=meter,
                                budget=controller, system=name, budget_energy=self.cfg.budget.energy,
                                cheapest_mj=cheapest_mj, step_costs=self.step_costs,
                                meter_window_ms=self.cfg.engine.meter_window_ms)
        else:
            engine = Engine(self.encoders, self.fusion, policy, meter=meter, budget=controller, system=name,
                            input_adapter=self.input_adapter, budget_energy=self.cfg.budget.energy,
                            cheapest_mj=cheapest_mj, step_windows=self.cfg.engine.step_windows)
        if isinstance(engine, FastEngine):
            engine.warm_up()  # compiled now: a stream's first sample does not wait for it
        return EngineSystem(name, engine, self.modalities, rung=self.rung)

    def rexit(self, meter: Any = None, seed: int = 0) -> EngineSystem:
        # the same thresholds and rule, but every exit evaluated and no UoE skipping (MMExit's RExit)
        settings = dataclasses.replace(
            settings_from_config(self.profile, self.cfg.scheduler),
            skip_negative=False, threshold_coupling=0.0, min_exit_prob=0.0, min_exit_accuracy=0.0,
        )
        engine = Engine(self.encoders, self.fusion, RandomOrderPolicy(self.profile, settings, seed), meter=meter,
                        system="rexit", input_adapter=self.input_adapter, step_windows=self.cfg.engine.step_windows)
        return EngineSystem("rexit", engine, self.modalities)
