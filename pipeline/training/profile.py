"""The exit profile: every exit's accuracy a, exit probability p and cost c, measured offline.

``make_profile`` runs the trained encoders and the fusion exit over the calibration split: MACs
from the flop counter, mJ from the configured power meter, scores at the configured exit rule;
the scheduler (:mod:`exitflow.scheduler.profile`) reads the saved JSON.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.fusion_grid import ExitGridFusion
from exitflow.encoders.last_rung import RUNG_KEY
from exitflow.encoders.text import TextEarlyExitEncoder
from exitflow.pipeline.artifacts import profile_path, weight_files
from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import AVSplit, load_split
from exitflow.pipeline.inference.engine import apply_engine_settings, default_input_adapter
from exitflow.pipeline.inference.loading import load_encoders, load_fusion
from exitflow.pipeline.training.late_fusion import fusion_logits
from exitflow.pipeline.training.records import ExitRecords, collect_exits, subsets
from exitflow.scheduler.policy import FUSION_KEY
from exitflow.scheduler.profile import (
    ExitArrays,
    Profile,
    build_profile,
    fingerprint_checkpoints,
)
from exitflow.scheduler.rules import scores_from_probs


def _fuse_batch(fusion: Any, outs: dict[str, Any], subset: tuple[str, ...]) -> torch.Tensor:
    """Logits of ``fusion`` over the ExitOutputs of ``subset`` (either fusion protocol)."""
    if hasattr(fusion, "fuse_exits"):
        return fusion.fuse_exits({m: outs[m] for m in subset}).logits
    return fusion({m: outs[m].embedding for m in subset}, list(subset))


def fusion_entries(
    cfg: Config, fusion: Any, encoders: dict[str, EarlyExitEncoder], split: AVSplit,
    records: dict[str, ExitRecords], fusion_mj: dict, progress: bool = True,
) -> dict[tuple[str, ...], tuple[np.ndarray, float, float]]:
    """Per modality subset: (correct per sample, MACs per sample, mJ per sample) of the fusion exit."""
    labels = split.labels
    if hasattr(fusion, "fuse_exits") and not isinstance(fusion, ExitGridFusion):
        from exitflow.pipeline.training.records import collect_tokens, run_records

        with_embedding = fusion.config.exit_embedding_token
        tokens = collect_tokens(encoders, split, progress=progress, with_embedding=with_embedding)
        out = {}
        for sub in subsets(tuple(records)):
            res = run_records(fusion, tokens, sub, trim=fusion.trim_at_inference, thresholds=fusion.exit_thresholds)
            out[sub] = (res["correct"], float(res["macs"].mean()), fusion_mj[sub])
        return out
    if isinstance(fusion, ExitGridFusion) and fusion.passthrough:  # one modality: its last exit's own answer
        (m,) = tuple(records)
        return {(m,): (records[m].logits[-1].argmax(1) == labels, 0.0, fusion_mj[(m,)])}
    rows = np.arange(labels.shape[0])
    with torch.no_grad():
        return {
            sub: ((fusion_logits(fusion, records, sub, rows).argmax(1).numpy() == labels), float(fusion.macs),
                  fusion_mj[sub])
            for sub in subsets(tuple(records))
        }


def controlled_mj(measurement: Any, energy: str) -> float:
    """The energy a budget of kind ``energy`` (``dynamic`` or ``total``) sees in one window."""
    dynamic = getattr(measurement, "dynamic_energy_mj", None)
    if energy == "dynamic" and dynamic is not None:
        return float(dynamic)
    return float(measurement.energy_mj or 0.0)


def _step_energy(
    encoders, fusion, split: AVSplit, meter, n: int, energy: str = "dynamic"
) -> tuple[dict[str, np.ndarray], dict, str, bool]:
    """Mean energy (mJ) of each encoder step and of fusion per subset, at batch 1 over ``n`` samples."""
    per_step = {m: np.zeros(enc.num_exits) for m, enc in encoders.items()}
    sources, estimated = set(), False
    with torch.inference_mode():
        for i in range(n):
            outs = {}
            for m, enc in encoders.items():
                payload = split.text[i] if m == "text" else (split.image[i] if m == "image" else split.audio[i])
                state = enc.start(default_input_adapter(m, payload))
                for j in range(enc.num_exits):
                    meter.begin_window("step")
                    outs[m] = enc.step(state)
                    res = meter.end_window("step")
                    per_step[m][j] += controlled_mj(res, energy) / n
                    sources.add(res.source)
                    estimated |= bool(res.estimated)
        fusion_mj = {}
        for s in subsets(tuple(encoders)):
            meter.begin_window("fusion")
            for _ in range(n):
                _fuse_batch(fusion, outs, s)
            fusion_mj[s] = controlled_mj(meter.end_window("fusion"), energy) / n
    return per_step, fusion_mj, "+".join(sorted(sources)), estimated


StepEnergy = tuple[dict[str, np.ndarray], dict, str, bool]  # per-step mJ, fusion mJ per subset, source, estimated


def measure_step_energy(cfg: Config, encoders: dict[str, EarlyExitEncoder], fusion: Any, split: AVSplit, meter,
                        energy_samples: int) -> StepEnergy:
    """Energy of every encoder step and fusion subset at batch 1 over ``energy_samples`` rows, with the
    engine's thread setting (what :func:`make_profile` records)."""
    threads = torch.get_num_threads()
    apply_engine_settings(cfg)  # step energy at batch 1 as the engine runs it (engine.num_threads)
    try:
        return _step_energy(encoders, fusion, split, meter, energy_samples, cfg.budget.energy)
    finally:
        torch.set_num_threads(threads)


def make_profile(
    cfg: Config, dataset: str, meter, energy_samples: int = 100, progress: bool = True,
    thresholds: dict[str, float] | None = None, limit: int | None = None,
    records: dict[str, ExitRecords] | None = None, energy: StepEnergy | None = None, save: bool = True,
    rung: dict[str, Any] | None = None,
) -> Profile:
    """Profile every exit on the val split at the configured thresholds (or ``thresholds``, e.g. the
    calibrated ones, ``fusion`` included); saved beside the checkpoints (unless ``save`` is False).

    ``records`` (the exits over the same val rows) and ``energy`` (:func:`measure_step_energy`) reuse
    what the caller already ran: ``exitflow calibrate`` runs the encoders over val once. ``rung``: the last
    rung calibration chose (:class:`~scheduler.profile.Profile`'s ``rung``).
    """
    s = cfg.scheduler
    encoders = load_encoders(cfg, dataset)
    fusion = load_fusion(cfg, dataset)
    val = load_split(cfg, "val", dataset, progress).head(limit)
    if records is None:
        records = collect_exits(encoders, val, progress=progress)
    labels = val.labels
    if energy is None:
        energy = measure_step_energy(cfg, encoders, fusion, val, meter, energy_samples)
    per_step, fusion_mj, source, estimated = energy
    source = f"{source} ({cfg.budget.energy} energy)"  # the kind the budget controls, so the two agree
    per_exit = {}
    for m, rec in records.items():
        probs = torch.softmax(torch.from_numpy(rec.logits), dim=-1).numpy().transpose(1, 0, 2)  # (N, E, C)
        scores = scores_from_probs(s.exit_rule, probs)  # (N, E)
        correct = (rec.logits.argmax(-1) == labels[None]).T  # (N, E)
        per_exit[m] = ExitArrays(
            scores=scores,
            correct=correct,
            macs_cumulative=np.asarray(_exit_macs(encoders[m], val), dtype=np.float64),
            energy_mj_step=np.broadcast_to(per_step[m], correct.shape).copy(),
            layers=tuple(encoders[m].exit_layers),
        )
    fusion_rows = fusion_entries(cfg, fusion, encoders, val, records, fusion_mj, progress)
    chosen = dict(thresholds or {})
    thresholds = {m: chosen.get(m, s.thresholds.get(m, s.threshold if s.threshold is not None
                                                 else DEFAULT_THRESHOLD[s.exit_rule]))
                  for m in records}
    profile = build_profile(
        per_exit, thresholds, exit_rule=s.exit_rule, fusion=fusion_rows,
        fingerprint=fingerprint_checkpoints(weight_files(cfg, dataset)), energy_source=source,
        energy_estimated=estimated, device=cfg.engine.device,
    )
    profile = dataclasses.replace(profile, rung=dict(rung) if rung else None)
    for key in (FUSION_KEY, RUNG_KEY):  # the fused checks' and the full fusion's before the last rung (CNN family)
        if key in chosen:
            profile.thresholds[key] = float(chosen[key])
    if save:
        profile.save(profile_path(cfg, dataset))
    return profile


def _exit_macs(encoder: EarlyExitEncoder, split: AVSplit) -> list[float] | list[int]:
    """Cumulative MACs per exit; text: the mean over the split's real token counts (not ``ref_tokens``)."""
    if isinstance(encoder, TextEarlyExitEncoder):
        return encoder.mean_exit_macs(list(split.text or []))
    return encoder.exit_macs()


DEFAULT_THRESHOLD = {"entropy": 0.2, "max_prob": 0.9, "patience": 2.0, "none": 0.0}




def profile_summary(profile: Profile) -> str:
    lines = [f"exit rule {profile.exit_rule}, thresholds {json.dumps(profile.thresholds)}, "
             f"energy {profile.energy_source} (estimated={profile.energy_estimated})"]
    for m, exits in profile.exits.items():
        for e in exits:
            mj = f"{e.energy_mj:.3f} mJ" if e.energy_mj is not None else "-"
            lines.append(f"  {m}/{e.exit_index} layer {e.layer}: a={e.accuracy:.4f} p={e.exit_prob:.3f} "
                         f"macs={e.macs:,.0f} {mj}")
    for f in profile.fusion:
        lines.append(f"  fusion {'+'.join(f.modalities)}: a={f.accuracy:.4f} macs={f.macs:,.0f}")
    return "\n".join(lines)
