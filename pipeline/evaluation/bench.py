"""Side-by-side bench: every system on the same samples, in one process, with one power meter.

Rows: ``{"system", "n", "accuracy", "macs_per_sample", "ms_per_sample", "mj_per_sample",
"energy_source", "estimated"}``. Time is the wall time around each ``process()`` call; energy is
one meter window around each system's whole run, divided by the number of samples (robust on
meters whose per-call resolution is coarse). Systems run in turn on the same in-memory samples.

On an imported data set (``--dataset DIR``) there are no LeNet baselines: the systems are
``full``, each modality alone (its encoder to the last exit, through the exit grid's head for that
modality alone; named after the modality), ``static``, ``rexit`` and ``exitflow``. A modality
alone gives no answer (prediction -1, counted wrong, 0 MACs) on a sample that lacks it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from exitflow.pipeline.artifacts import baseline_dataset, modalities_of
from exitflow.pipeline.data.imported import is_imported
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts, truncated_macs
from exitflow.pipeline.inference.shadow import FIXED_SUFFIX, ShadowRecalibration, bench_systems
from exitflow.pipeline.inference.systems import baseline_system
from exitflow.pipeline.messages import Decision, Sample

FIXED_SYSTEM = "exitflow" + FIXED_SUFFIX  # exitflow with frozen calibrated thresholds (no shadow)
BENCH_SYSTEMS = ("full", "lf", "image", "audio", "static", "rexit", "exitflow", FIXED_SYSTEM)
CONCAT_SYSTEM = "exitflow_concat"  # exitflow with the late (concat) fusion exit, beside a transformer-fusion run
ALL_SYSTEMS = (*BENCH_SYSTEMS, CONCAT_SYSTEM)


class ModalityAlone:
    """One modality's encoder to its last exit, fused alone; no answer (-1) where the sample lacks it."""

    def __init__(self, system: Any, modality: str):
        self.system, self.modality, self.name = system, modality, system.name

    def process(self, sample: Sample) -> Decision:
        if self.modality in sample.payloads and self.modality not in sample.missing:
            return self.system.process(sample)
        return Decision(sample_id=sample.sample_id, prediction=-1, label=sample.label, system=self.name,
                        missing=[self.modality], latency_ms={"total": 0.0}, timestamp_ns=sample.timestamp_ns)


def default_systems(cfg: Any, dataset: str | None = None) -> tuple[str, ...]:
    """The seven systems, plus ``exitflow_concat`` when the fusion exit is the transformer; an imported
    set's systems (module doc) when ``dataset`` is one."""
    if dataset is not None and is_imported(dataset):
        return ("full", *modalities_of(dataset), "static", "rexit", "exitflow")
    return ALL_SYSTEMS if cfg.fusion.exit == "transformer" else BENCH_SYSTEMS


def concat_parts(parts: AdaptiveParts) -> AdaptiveParts:
    """The same data set's parts with the late (concat) fusion exit and its own profile."""
    import dataclasses

    cfg = dataclasses.replace(parts.cfg, fusion=dataclasses.replace(parts.cfg.fusion, exit="late"))
    return AdaptiveParts(cfg, parts.dataset)


def bench_inputs(cfg: Any, dataset: str, split: str, limit: int | None) -> tuple[AdaptiveParts, list[Sample]]:
    """The adaptive parts of ``dataset`` and the first ``limit`` samples of ``split``, loaded once."""
    from exitflow.pipeline.data.avmnist import load_split
    from exitflow.pipeline.evaluation.replay import split_samples

    parts = AdaptiveParts(cfg, dataset)
    return parts, list(split_samples(load_split(cfg, split, dataset), limit))


def json_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bench rows without their per-sample decisions (what ``--json`` and the demo write)."""
    return [{k: v for k, v in r.items() if k != "decisions"} for r in rows]


def run_system(system: Any, samples: Sequence[Sample], meter: Any, progress: bool = False) -> dict[str, Any]:
    """Run ``system`` over ``samples``; returns the bench row plus the decisions."""
    decisions, elapsed_s = [], 0.0
    meter.begin_window("bench")
    for sample in tqdm(samples, desc=system.name, disable=not progress, leave=False):
        t0 = time.perf_counter()
        decisions.append(system.process(sample))
        elapsed_s += time.perf_counter() - t0
    m = meter.end_window("bench")
    n = len(samples)
    labelled = [d for d in decisions if d.label is not None]
    return {
        "system": system.name,
        "backend": backend_of(system),
        "n": n,
        "accuracy": float(np.mean([d.prediction == d.label for d in labelled])) if labelled else None,
        "macs_per_sample": float(np.mean([d.macs for d in decisions])),
        "ms_per_sample": elapsed_s * 1000.0 / n,
        "mj_per_sample": None if m.energy_mj is None else m.energy_mj / n,
        "dynamic_mj_per_sample": _per_sample(getattr(m, "dynamic_energy_mj", None), n),
        "idle_mj_per_sample": _per_sample(getattr(m, "idle_energy_mj", None), n),
        "dynamic_share": (
            None if getattr(m, "dynamic_energy_mj", None) is None or not m.energy_mj
            else m.dynamic_energy_mj / m.energy_mj
        ),
        "idle_basis": getattr(m, "idle_basis", None),
        "energy_source": m.source,
        "estimated": bool(m.estimated),
        "decisions": decisions,
    }


def backend_of(system: Any) -> str:
    """Where ``system`` runs its samples: ``onnxruntime`` (compiled) or ``torch`` (eager)."""
    inner = getattr(system, "system", None)  # ModalityAlone
    if inner is not None:
        return backend_of(inner)
    engine = getattr(system, "engine", None)
    if engine is not None:
        return str(getattr(engine, "backend", None) and engine.backend.name or "torch")
    return str(getattr(system, "backend", "torch"))


def _per_sample(value: float | None, n: int) -> float | None:
    return None if value is None else value / n


SINGLE_PASS = ("full", "lf", "static", "image", "audio", "text")  # systems that run the same network for every sample


def summary(rows: Sequence[dict[str, Any]], tolerance: float = 0.005) -> dict[str, Any]:
    """The most accurate single-pass system and the cheapest system (by MACs) within ``tolerance`` of it."""
    single = [r for r in rows if r["system"] in SINGLE_PASS and r["accuracy"] is not None]
    if not single:
        return {}
    best = max(single, key=lambda r: r["accuracy"])
    within = [r for r in rows if r["accuracy"] is not None and r["accuracy"] >= best["accuracy"] - tolerance]
    cheapest = min(within, key=lambda r: r["macs_per_sample"])
    return {"best_single_pass": best["system"], "best_accuracy": best["accuracy"], "tolerance": tolerance,
            "cheapest_within": cheapest["system"], "cheapest_accuracy": cheapest["accuracy"],
            "macs_ratio": best["macs_per_sample"] / cheapest["macs_per_sample"],
            "ms_ratio": best["ms_per_sample"] / cheapest["ms_per_sample"]}


def format_summary(rows: Sequence[dict[str, Any]], tolerance: float = 0.005) -> str:
    s = summary(rows, tolerance)
    if not s:
        return ""
    return (f"best single-pass system: {s['best_single_pass']} ({s['best_accuracy']:.4f}); cheapest within "
            f"{100 * tolerance:g} pt of it: {s['cheapest_within']} ({s['cheapest_accuracy']:.4f}) with "
            f"{s['macs_ratio']:.2f}x fewer MACs and {s['ms_ratio']:.2f}x less time")


def static_exits_matching(parts: AdaptiveParts, target_macs: float) -> dict[str, int]:
    """The fixed truncation (one exit per modality) whose MACs are closest to ``target_macs``."""
    options = [range(enc.num_exits) for enc in parts.encoders.values()]
    best, best_gap = None, float("inf")
    for combo in itertools.product(*options):
        exits = dict(zip(parts.encoders, combo, strict=True))
        macs = sum(truncated_macs(parts.encoders[m], k) for m, k in exits.items())
        if abs(macs - target_macs) < best_gap:
            best, best_gap = exits, abs(macs - target_macs)
    return best or {}


def bench(
    parts: AdaptiveParts, samples: Sequence[Sample], meter: Any, systems: Sequence[str] = BENCH_SYSTEMS,
    progress: bool = True, warmup: int = 20,
) -> list[dict[str, Any]]:
    """Run ``systems`` (exitflow before static, which matches its MACs) on ``samples``."""
    cfg = parts.cfg
    built: dict[str, Any] = {}
    for name in systems:
        if name == "full":
            built[name] = parts.full()
        elif is_imported(parts.dataset) and name in parts.encoders:  # the modality alone, full depth
            built[name] = ModalityAlone(parts.static({name: parts.encoders[name].num_exits - 1}, name=name), name)
        elif name in ("lf", "image", "audio"):
            built[name] = baseline_system(cfg, name, baseline_dataset(parts.dataset, name))
        elif name == "rexit":
            built[name] = parts.rexit(seed=cfg.data.seed)
        elif name == "exitflow":  # online self-recalibration on (the shadow full path), from the calibrated start
            built[name] = bench_systems(parts, meter)["exitflow"]
        elif name == FIXED_SYSTEM:
            built[name] = parts.exitflow(meter=meter, name=FIXED_SYSTEM)
        elif name == CONCAT_SYSTEM:
            late = concat_parts(parts)  # loaded once: the budget re-build below reuses it
            built[name] = late.exitflow(meter=meter, name=CONCAT_SYSTEM)
    rows: dict[str, dict[str, Any]] = {}
    order = [s for s in systems if s != "static"] + (["static"] if "static" in systems else [])
    for name in order:
        if name == "static":
            match = next((rows[n] for n in (FIXED_SYSTEM, "exitflow") if n in rows), None)
            target = match["macs_per_sample"] if match else 0.5 * rows["full"]["macs_per_sample"]
            built[name] = parts.static(static_exits_matching(parts, target))
        system = built[name]
        for sample in samples[:warmup]:  # warm caches and allocator, not measured
            if isinstance(system, ShadowRecalibration):  # its parts, so that its thresholds stay calibrated
                system.system.process(sample)
                system.full.process(sample)
            else:
                system.process(sample)
        if name == "exitflow" and system.engine.budget is not None:
            system = bench_systems(parts, meter)["exitflow"]  # fresh controller state after warm-up
        if name == FIXED_SYSTEM and system.engine.budget is not None:
            system = parts.exitflow(meter=meter, name=FIXED_SYSTEM)
        if name == CONCAT_SYSTEM and system.engine.budget is not None:
            system = late.exitflow(meter=meter, name=CONCAT_SYSTEM)
        rows[name] = run_system(system, samples, meter, progress)
        if name == "static":
            rows[name]["static_exits"] = built[name].exits
    return [rows[s] for s in systems]


def engine_mj(parts: AdaptiveParts, samples: Sequence[Sample], meter: Any) -> float:
    """Mean per-sample energy of ``full`` measured the way the engine measures (one window per sample):
    attributable energy when the budget controls it (``budget.energy: dynamic``), else total."""
    system = parts.full(eager=True)  # on the engine a budgeted exitflow runs on (the eager one, AdaptiveParts.exitflow)
    dynamic = parts.cfg.budget.energy == "dynamic"
    total = 0.0
    for sample in samples:
        meter.begin_window("full")
        system.process(sample)
        m = meter.end_window("full")
        value = m.dynamic_energy_mj if dynamic and getattr(m, "dynamic_energy_mj", None) is not None else m.energy_mj
        total += value or 0.0
    return total / len(samples)


def budget_run(parts: AdaptiveParts, samples: Sequence[Sample], meter: Any, budget_mj: float,
               skip: int = 200, progress: bool = False) -> dict[str, Any]:
    """exitflow under a per-sample energy budget; how closely the running average tracks it.

    The running average is over the engine's own per-sample energy (the sum of its step
    windows; attributable energy unless ``budget.energy: total``); ``max_dev_after_skip`` is the largest relative gap |avg_k - budget| / budget over
    every k > ``skip``, ``tail_mean_mj`` the mean of samples after ``skip``.
    """
    system = parts.exitflow(meter=meter, budget_mj=budget_mj, name="exitflow@budget")
    row = run_system(system, samples, meter, progress)
    engine = system.engine
    energy = np.array([engine.budget_energy(d) for d in row["decisions"]], dtype=np.float64)
    running = np.cumsum(energy) / np.arange(1, energy.shape[0] + 1)
    tail = running[skip:] if energy.shape[0] > skip else running[-1:]
    row.update({
        "budget_mj_per_sample": budget_mj,
        "engine_mj_per_sample": float(energy.mean()),
        "final_running_avg_mj": float(running[-1]),
        "max_dev_after_skip": float(np.max(np.abs(tail - budget_mj)) / budget_mj),
        "tail_mean_mj": float(energy[skip:].mean()) if energy.shape[0] > skip else None,
        "lambda_final": row["decisions"][-1].lam,
    })
    return row


def format_table(rows: Sequence[dict[str, Any]], reference: str = "full") -> str:
    ref = next((r for r in rows if r["system"] == reference), None)
    header = (
        f"{'system':<15}{'n':>6}{'accuracy':>10}{'MACs/sample':>14}{'ms/sample':>11}{'mJ/sample':>11}"
        f"{'dyn mJ':>9}{'MACs x':>8}{'ms x':>7}  {'backend':<12}energy source"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        mac_ratio = ref["macs_per_sample"] / r["macs_per_sample"] if ref and r["macs_per_sample"] else float("nan")
        ms_ratio = ref["ms_per_sample"] / r["ms_per_sample"] if ref and r["ms_per_sample"] else float("nan")
        mj = f"{r['mj_per_sample']:.3f}" if r["mj_per_sample"] is not None else "-"
        dyn = f"{r['dynamic_mj_per_sample']:.3f}" if r.get("dynamic_mj_per_sample") is not None else "-"
        est = " (estimated)" if r["estimated"] else ""
        lines.append(
            f"{r['system']:<15}{r['n']:>6}{r['accuracy']:>10.4f}{r['macs_per_sample']:>14,.0f}"
            f"{r['ms_per_sample']:>11.3f}{mj:>11}{dyn:>9}{mac_ratio:>8.2f}{ms_ratio:>7.2f}  "
            f"{r.get('backend', '-'):<12}{r['energy_source']}{est}"
        )
    lines.append(f"(MACs x and ms x: {reference}'s figure divided by the system's; > 1 means cheaper than {reference};")
    lines.append(" dyn mJ: the energy attributable to the work, total minus the idle floor over the window)")
    return "\n".join(lines)


def format_budget(row: dict[str, Any], fraction: float) -> str:
    """One line on how the budget run tracked ``fraction`` of full's energy."""
    return (
        f"budget {row['budget_mj_per_sample']:.3f} mJ/sample ({fraction:g} x full's "
        f"{row['full_engine_mj_per_sample']:.3f}): running average {row['final_running_avg_mj']:.3f} mJ at the end, "
        f"max deviation after 200 samples {100 * row['max_dev_after_skip']:.1f} %, accuracy {row['accuracy']:.4f}, "
        f"final lambda {row['lambda_final']:.3g}"
    )

