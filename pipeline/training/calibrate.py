"""The operating point of the CNN family, chosen on calibration data only (``exitflow calibrate``).

The engine's walk for an image + audio sample, in the policy's modality order ``first, second``:
``first``'s exits in depth order (exit when its own score passes), then ``second``'s exits, each
followed by a fused check over ``first``'s last exit and ``second``'s exit so far (exit when the
fused score passes); ``second``'s last exit ends with the fusion over both last exits. With three
modalities the third's exits follow in the same way (each with a fused check over the earlier
modalities' last exits and the third's exit so far; the checks before it fuse with the third
absent); with one modality its exits alone (the grid is a pass-through: the final fusion answers
with the last exit's own logits). This
module replays that walk on the calibration split's per-exit logits for every combination of a
threshold grid (vectorised numpy, no model runs) and keeps the cheapest combination whose
accuracy is within ``scheduler.calibration_drop`` of the full model on the same split and whose
early answers, at every check, are at least as accurate as the full model on the same samples
(minus ``scheduler.calibration_regret``) and right at least ``scheduler.calibration_precision`` of
the time. The
thresholds go into the exit profile (``fusion`` included), which the engine loads.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binom

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.baseline import LateFusion, measure_macs
from exitflow.encoders.checkpoint import file_sha256
from exitflow.encoders.fusion_grid import ExitGridFusion, subset_key
from exitflow.encoders.last_rung import RUNG_KEY, fit_mix_weight, mix_logits
from exitflow.pipeline.artifacts import baseline_dataset
from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import DATASETS, AVSplit
from exitflow.pipeline.data.imported import ImportedSplit
from exitflow.pipeline.errors import CheckpointError
from exitflow.pipeline.inference.loading import load_baseline, rung_weights
from exitflow.pipeline.training.profile import make_profile, measure_step_energy
from exitflow.pipeline.training.records import ExitRecords
from exitflow.scheduler.policy import FUSION_KEY
from exitflow.scheduler.profile import ExitArrays, build_profile
from exitflow.scheduler.recalibration import shifted_threshold
from exitflow.scheduler.rules import passes, scores_from_probs

log = logging.getLogger(__name__)

# normalized entropy (exit when <=) and max-prob (exit when >=) grids; the ends never / always pass
THRESHOLD_GRID = {
    "entropy": (-1.0, 0.02, 0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6),
    "max_prob": (2.0, 0.999, 0.995, 0.99, 0.98, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8, 0.7, 0.6),
}


@dataclass(frozen=True)
class WalkResult:
    """Accuracy, mean MACs and the share of samples answered at each check of a simulated walk."""

    accuracy: float
    macs: float
    shares: dict[str, float]
    precision: dict[str, float]  # accuracy of the samples each check answered (1.0 where none)
    full_precision: dict[str, float]  # the full model's accuracy on those same samples (1.0 where none)


def family_logits(
    encoders: Mapping[str, torch.nn.Module], fusion: ExitGridFusion, inputs: Mapping[str, Any],
    calibrated: bool = True, outs: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Logits (B, C) of every exit (``image0``, ``audio2``, ...) and every grid head (``image2_audio0``);
    with three or more modalities also of every fusion over a subset of two or more of them, the others
    absent (``image2_audio0`` in a grid of image, audio and text: the walk's checks before the last modality).

    ``calibrated`` divides by the stored temperatures; False gives the raw logits (training, fitting T).
    ``outs``: the encoders' outputs on ``inputs`` when the caller already ran them.
    """
    if outs is None:
        outs = {m: encoders[m](inputs[m]) for m in fusion.modalities}
    logits: dict[str, torch.Tensor] = {}
    for m in fusion.modalities:
        for o in outs[m]:
            logits[f"{m}{o.exit_index}"] = o.logits if calibrated else o.logits * _temperature(encoders[m], o.exit_index)
    every = len(fusion.modalities)
    if fusion.passthrough:  # one modality: no heads
        return logits
    subsets = [fusion.modalities] + [list(c) for r in range(2, every) for c in itertools.combinations(fusion.modalities, r)]
    for subset in subsets:
        for combo in itertools.product(*(range(len(outs[m])) for m in subset)):
            exits = dict(zip(subset, combo, strict=True))
            embeddings = {m: outs[m][e].embedding for m, e in exits.items()}
            logits[subset_key(exits, fusion.modalities)] = fusion.fuse(embeddings, exits, calibrated)
    return logits


def _temperature(encoder: torch.nn.Module, index: int) -> Any:
    """Exit ``index``'s temperature: a CNN's ``temperatures`` buffer, a text encoder's ``temperatures()``."""
    temps = encoder.temperatures
    return temps()[index] if callable(temps) else temps[index]


def batch_inputs(split: AVSplit | ImportedSplit, m: str, rows: np.ndarray) -> Any:
    """Modality ``m`` of ``rows``: (B, 1, H, W) float, or a list of strings (text for a pretrained backbone)."""
    x = getattr(split, m)
    if isinstance(x, list):
        return [x[int(i)] for i in rows]
    return torch.from_numpy(np.ascontiguousarray(x[rows])).float()


@torch.no_grad()
def split_logits(
    encoders: Mapping[str, torch.nn.Module], fusion: ExitGridFusion, split: AVSplit | ImportedSplit,
    limit: int | None = None, batch: int = 500, embeddings: dict[str, list[np.ndarray]] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Calibrated logits of every output over the first ``limit`` samples of ``split``, and the labels.

    ``embeddings``: a dict that receives, per modality, the last exit's embedding batches (B, D) of the
    same pass (what :func:`exit_records` needs, so the encoders run over the split once).
    """
    for module in (*encoders.values(), fusion):
        module.eval()
    n = len(split) if limit is None else min(limit, len(split))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        rows = np.arange(start, min(start + batch, n))
        inputs = {m: batch_inputs(split, m, rows) for m in fusion.modalities}  # (B, 1, H, W) or strings
        outs = {m: encoders[m](inputs[m]) for m in fusion.modalities}
        for k, v in family_logits(encoders, fusion, inputs, outs=outs).items():
            parts.setdefault(k, []).append(v.numpy())
        if embeddings is not None:
            for m in fusion.modalities:
                embeddings.setdefault(m, []).append(outs[m][-1].embedding.float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}, split.labels[:n]


def exit_records(logits: Mapping[str, np.ndarray], embeddings: Mapping[str, list[np.ndarray]],
                 num_exits: Mapping[str, int]) -> dict[str, ExitRecords]:
    """:class:`ExitRecords` (what the profile reads) from one :func:`split_logits` pass."""
    return {m: ExitRecords(np.stack([logits[f"{m}{e}"] for e in range(n)]).astype(np.float32),  # (E, N, C)
                           np.concatenate(embeddings[m]))
            for m, n in num_exits.items()}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


class WalkSimulator:
    """The engine's walk over precomputed calibration logits, for any thresholds (vectorised).

    Args:
        logits: Output key -> calibrated logits (N, C) (``family_logits`` keys).
        labels: (N,) class indices.
        order: The modalities (one, two or three) in the policy's order.
        exit_macs: Modality -> cumulative MACs at each exit (heads of every earlier exit included).
        head_macs: Grid head key -> MACs of that fusion head.
        rule: ``entropy`` or ``max_prob``.
        agreement: A check may answer only when its prediction also equals the previous check's in the
            walk (agreement between successive exits; the first check never answers early).
        rung: The last rung behind the walk (:mod:`encoders.last_rung`): (its answer's logits (N, C), the
            MACs it adds). The walk's final fusion then becomes a check with its own threshold (key
            ``rung``: a confident full fusion answers, the others escalate) and the samples none of the
            checks answered escalate to the rung; the full path is the walk plus the rung.
    """

    def __init__(
        self, logits: Mapping[str, np.ndarray], labels: np.ndarray, order: Sequence[str],
        exit_macs: Mapping[str, Sequence[float]], head_macs: Mapping[str, float], rule: str,
        modalities: Sequence[str] | None = None, agreement: bool = False,
        rung: tuple[np.ndarray, float] | None = None,
    ):
        if rule not in THRESHOLD_GRID:
            raise ValueError(f"the walk simulation supports {sorted(THRESHOLD_GRID)}, not {rule!r}")
        if not 1 <= len(order) <= 3 or len(set(order)) != len(order):
            raise ValueError(f"the CNN family walk has one, two or three modalities, got order {list(order)}")
        self.order, self.rule, self.labels = tuple(order), rule, np.asarray(labels)
        self.modalities = tuple(modalities or order)  # the grid's key order
        # (name, threshold key, macs, score, pred) of every check in walk order
        self.checks: list[tuple[str, str, float, np.ndarray, np.ndarray]] = []
        first = self.order[0]
        for e in range(len(exit_macs[first])):
            self._add(f"{first}{e}", first, float(exit_macs[first][e]), logits[f"{first}{e}"])
        fused_macs = 0.0  # one modality: its last exit answers the rest (the pass-through fusion's answer)
        for k, m in enumerate(self.order[1:], start=1):
            earlier = {o: len(exit_macs[o]) - 1 for o in self.order[:k]}
            for e in range(len(exit_macs[m])):
                base = float(sum(exit_macs[o][-1] for o in earlier) + exit_macs[m][e])
                self._add(f"{m}{e}", m, base + fused_macs, logits[f"{m}{e}"])
                key = subset_key({**earlier, m: e}, self.modalities)
                # a fusion with modalities absent runs the head of their last exits (their placeholders)
                head = subset_key({o: earlier.get(o, len(exit_macs[o]) - 1) if o != m else e for o in self.modalities},
                                  self.modalities)
                fused_macs += float(head_macs[head])
                self._add(key, FUSION_KEY, base + fused_macs, logits[key])
        if rung is not None:  # the samples no check answered go on to the rung (it answers the rest)
            rung_logits, rung_macs = rung
            name, _, macs, score, pred = self.checks[-1]
            self.checks[-1] = (name, RUNG_KEY, macs, score, pred)  # the full fusion's check: its own threshold
            self._add(RUNG_KEY, RUNG_KEY, macs + float(rung_macs), rung_logits)
        n = self.labels.shape[0]
        self.agrees = [np.ones(n, dtype=bool) if not agreement else
                       (np.zeros(n, dtype=bool) if i == 0 else self.checks[i][4] == self.checks[i - 1][4])
                       for i in range(len(self.checks))]  # (N,) per check: may it answer early

    def _add(self, name: str, kind: str, macs: float, logits: np.ndarray) -> None:
        probs = _softmax(np.asarray(logits, dtype=np.float64))
        score = scores_from_probs(self.rule, probs[:, None, :])[:, 0]  # (N,)
        self.checks.append((name, kind, macs, score, probs.argmax(axis=1)))

    def predictions(self, thresholds: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample (prediction (N,), MACs (N,)) of the walk with ``thresholds``."""
        n = self.labels.shape[0]
        done = np.zeros(n, dtype=bool)
        pred = np.zeros(n, dtype=np.int64)
        macs = np.zeros(n)
        last = len(self.checks) - 1
        for i, (_, key, cost, score, p) in enumerate(self.checks):
            fire = ~done if i == last else ~done & passes(self.rule, score, thresholds[key]) & self.agrees[i]
            pred[fire], macs[fire] = p[fire], cost
            done |= fire
        return pred, macs

    def full_predictions(self) -> np.ndarray:
        """(N,) predictions of the full path (the walk's final fusion over every last exit)."""
        return self.checks[-1][4]

    def run(self, thresholds: Mapping[str, float]) -> WalkResult:
        """Simulate with ``thresholds`` (a key per modality and ``fusion``)."""
        n = self.labels.shape[0]
        done = np.zeros(n, dtype=bool)
        pred = np.zeros(n, dtype=np.int64)
        macs = np.zeros(n)
        shares, precision, full_precision = {}, {}, {}
        full_right = self.checks[-1][4] == self.labels
        last = len(self.checks) - 1
        for i, (name, key, cost, score, p) in enumerate(self.checks):
            tau = thresholds.get(key, 0.0)  # the last check answers the rest: its threshold is never read
            fire = ~done if i == last else ~done & passes(self.rule, score, tau) & self.agrees[i]  # final: the rest
            pred[fire], macs[fire] = p[fire], cost
            shares[name] = float(fire.mean())
            precision[name] = float((p[fire] == self.labels[fire]).mean()) if fire.any() else 1.0
            full_precision[name] = float(full_right[fire].mean()) if fire.any() else 1.0
            done |= fire
        return WalkResult(float((pred == self.labels).mean()), float(macs.mean()), shares, precision, full_precision)

    def admissible(
        self, result: WalkResult, max_drop: float, min_precision: float = 0.0, max_regret: float | None = 0.0
    ) -> bool:
        """Whether ``result`` meets the accuracy bar and every early check's precision bars (see :meth:`search`)."""
        if result.accuracy < self.full_accuracy() - max_drop:
            return False
        final = self.checks[-1][0]
        early = [k for k in result.shares if k != final and result.shares[k] > 0]
        if any(result.precision[k] < min_precision for k in early):
            return False
        return max_regret is None or all(result.precision[k] >= result.full_precision[k] - max_regret for k in early)

    def full_accuracy(self) -> float:
        return float((self.checks[-1][4] == self.labels).mean())

    def search(
        self, max_drop: float, min_precision: float = 0.0, grid: Sequence[float] | None = None,
        max_regret: float | None = 0.0,
    ) -> tuple[dict[str, float], WalkResult]:
        """The cheapest thresholds whose accuracy is at least the full model's minus ``max_drop`` and
        whose early answers, at every check, are (a) at least as accurate as the full model on the
        same samples minus ``max_regret`` (None: no such bar) and (b) right at least ``min_precision``
        of the time.

        The per-check bars are what transfers to other voices: the full model's accuracy on one
        calibration speaker (the global bar) can be far from its accuracy on the next, so a global
        bar alone lets exits through that are much worse than the full model where it is strong
        (measured: docs/adaptive.md).
        """
        if grid is None:  # three modalities: every other value of the grid (7^4 threshold sets, not 13^4)
            grid = THRESHOLD_GRID[self.rule][:: 2 if len(self.order) > 2 else 1]
        grid = tuple(grid)
        target = self.full_accuracy() - max_drop
        best: tuple[dict[str, float], WalkResult] | None = None
        self.last_admissible: list[tuple[dict[str, float], WalkResult]] = []  # cheaper and cheaper
        keys = (*self.order, FUSION_KEY) + ((RUNG_KEY,) if self.checks[-1][0] == RUNG_KEY else ())
        for values in itertools.product(grid, repeat=len(keys)):
            thresholds = dict(zip(keys, values, strict=True))
            result = self.run(thresholds)
            if result.accuracy < target:
                continue
            if self.admissible(result, max_drop, min_precision, max_regret):
                self.last_admissible.append((thresholds, result))
                if best is None or result.macs < best[1].macs:
                    best = (thresholds, result)
        if best is None:  # nothing exits early at that accuracy: never exit (the grid's first value)
            never = dict.fromkeys(keys, grid[0])
            best = (never, self.run(never))
        return best


LTT_SHIFTS = tuple(np.round(np.arange(-4.0, 1.0001, 0.125), 3))  # strict -> loose, the online controller's range


def binomial_pvalue(disagreements: int, n: int, alpha: float) -> float:
    """P(Bin(n, alpha) <= disagreements): the p-value of H0 "risk > alpha" after ``disagreements`` in ``n``."""
    return float(binom.cdf(disagreements, n, alpha))


@dataclass(frozen=True)
class RiskControlResult:
    """What :func:`risk_controlled_shift` chose: the shift, its thresholds and the val figures behind it."""

    shift: float
    thresholds: dict[str, float]
    val_disagreement: float
    pvalue: float
    alpha: float
    delta: float


def risk_controlled_shift(
    sim: WalkSimulator, base: Mapping[str, float], alpha: float, delta: float = 0.1,
    shifts: Sequence[float] = LTT_SHIFTS,
) -> RiskControlResult:
    """Learn-then-Test (Angelopoulos et al. 2021) on disagreement with the full path, over the online
    controller's one-parameter family ``thresholds(shift)`` (:func:`scheduler.recalibration.shifted_threshold`).

    Fixed-sequence testing from the strictest shift (no early exit: risk 0) to the loosest: each shift's
    H0 "disagreement > alpha" is rejected when its binomial p-value is <= ``delta``; the loosest shift
    before the first non-rejection is returned. Guarantee: with probability >= 1 - ``delta`` over the
    calibration samples, the chosen thresholds disagree with the full path on at most ``alpha`` of new
    samples *drawn like the calibration samples* (the same voice and room; another voice is outside it).
    """
    full = sim.full_predictions()
    n = full.shape[0]
    chosen = RiskControlResult(shifts[0], {k: shifted_threshold(sim.rule, t, -math.inf, 0.0) for k, t in base.items()},
                               0.0, 0.0, alpha, delta)
    for shift in shifts:
        thresholds = {k: shifted_threshold(sim.rule, t, shift, min(shifts) - 1e-9) for k, t in base.items()}
        pred, _ = sim.predictions(thresholds)
        k = int((pred != full).sum())
        pvalue = binomial_pvalue(k, n, alpha)
        if pvalue > delta:
            break
        chosen = RiskControlResult(float(shift), thresholds, k / n, pvalue, alpha, delta)
    return chosen


@torch.no_grad()
def rung_logits(model: LateFusion, split: AVSplit | ImportedSplit, batch: int = 500) -> np.ndarray:
    """The rung model's logits (N, C) over ``split``."""
    model.eval()
    parts = []
    for start in range(0, len(split), batch):
        rows = np.arange(start, min(start + batch, len(split)))
        parts.append(model({m: batch_inputs(split, m, rows) for m in model.modalities}).float().numpy())
    return np.concatenate(parts)


def last_rung(
    cfg: Config, dataset: str, val: AVSplit | ImportedSplit, logits: Mapping[str, np.ndarray], labels: np.ndarray,
    encoders: Mapping[str, EarlyExitEncoder],
) -> tuple[dict[str, Any] | None, tuple[np.ndarray, float] | None]:
    """The last rung for ``scheduler.last_rung`` (None, None: ``none``, or its model is not trained): the
    profile's entry (model, mix weight fitted on val, its weights' hash) and the walk simulation's rung."""
    if cfg.scheduler.last_rung == "none":
        return None, None
    name = cfg.scheduler.last_rung
    if dataset not in DATASETS:  # an imported set: the built-in baselines know other classes
        return None, None
    try:
        weights = rung_weights(cfg, name, baseline_dataset(dataset, name))
    except CheckpointError as e:
        log.warning("no last rung: %s", e)
        return None, None
    model = load_baseline(cfg, name, baseline_dataset(dataset, name))
    if not set(model.modalities) <= set(encoders):
        log.warning("no last rung: %s reads %s, the data set has %s", name, model.modalities, sorted(encoders))
        return None, None
    final = subset_key({m: e.num_exits - 1 for m, e in encoders.items()}, list(encoders))
    lf = rung_logits(model, val)
    if lf.shape != logits[final].shape:
        log.warning("no last rung: %s gives %s logits, the CNN family %s", name, lf.shape, logits[final].shape)
        return None, None
    weight = fit_mix_weight(logits[final], lf, labels)
    entry = {"model": name, "weight": weight, "sha256": file_sha256(weights)}
    return entry, (mix_logits(logits[final], lf, weight), float(measure_macs(model)))


def calibrate_family(
    cfg: Config, dataset: str, meter: Any, energy_samples: int = 100, progress: bool = True, limit: int | None = None,
) -> dict:
    """Choose the thresholds on ``val`` (its first ``limit`` samples) for the policy's order, write the
    profile; returns a report.

    ``scheduler.calibration_criterion``: ``no_regret`` (the module doc's bars) or ``risk_control``: the
    no-regret thresholds then moved by the loosest shift that Learn-then-Test certifies for
    ``calibration_alpha`` disagreement with the full path at level ``calibration_delta``
    (:func:`risk_controlled_shift`; the same one-knob family the online recalibration moves).
    """
    from exitflow.pipeline.data.avmnist import load_split
    from exitflow.pipeline.inference.engine import policy_from_config
    from exitflow.pipeline.inference.loading import load_encoders, load_fusion

    encoders, fusion = load_encoders(cfg, dataset), load_fusion(cfg, dataset)
    if not isinstance(fusion, ExitGridFusion):
        raise ValueError(f"exitflow calibrate chooses the CNN family's operating point; {dataset} has no exit grid")
    val = load_split(cfg, "val", dataset, progress).head(limit)
    embeddings: dict[str, list[np.ndarray]] = {}
    logits, labels = split_logits(encoders, fusion, val, embeddings=embeddings)  # the one pass over val
    records = exit_records(logits, embeddings, {m: enc.num_exits for m, enc in encoders.items()})
    energy = measure_step_energy(cfg, encoders, fusion, val, meter, energy_samples)
    rule = cfg.scheduler.exit_rule
    exit_macs = {m: [float(v) for v in (  # text: the mean over val's real token counts (as the profile)
        enc.mean_exit_macs(val.text) if isinstance(getattr(val, m), list) else enc.exit_macs())]
        for m, enc in encoders.items()}
    every = dataclasses.replace(cfg.scheduler, skip_negative=False)  # the walk with both modalities
    rung, rung_sim = last_rung(cfg, dataset, val, logits, labels, encoders)
    candidates = []
    for order in itertools.permutations(fusion.modalities):
        sim = WalkSimulator(logits, labels, order, exit_macs, fusion.head_macs, rule, fusion.modalities,
                            rung=rung_sim)
        thresholds, result = sim.search(cfg.scheduler.calibration_drop, cfg.scheduler.calibration_precision,
                                        max_regret=cfg.scheduler.calibration_regret)
        candidates.append((result.macs, order, thresholds, result, sim))
    # the UoE plan depends on the profile and the profile on the thresholds, so every admissible threshold
    # set is judged by the order the policy would plan from it (a profile built in memory from the same
    # val arrays; the fusion rows, which do not depend on thresholds, from one measured profile); the
    # cheapest set whose planned order is the one it was simulated in wins (no early exits if none)
    base = make_profile(cfg, dataset, meter, energy_samples, progress, thresholds=candidates[0][2], limit=limit,
                        records=records, energy=energy, save=False)
    per_exit = {
        m: ExitArrays(
            scores=np.stack([scores_from_probs(rule, _softmax(logits[f"{m}{e}"])[:, None, :])[:, 0]
                             for e in range(encoders[m].num_exits)], axis=1),
            correct=np.stack([logits[f"{m}{e}"].argmax(1) == labels for e in range(encoders[m].num_exits)], axis=1),
            macs_cumulative=np.asarray(exit_macs[m]),
        )
        for m in fusion.modalities
    }
    pool = sorted(((r.macs, tuple(c[1]), t, r, c[4]) for c in candidates for t, r in c[4].last_admissible),
                  key=lambda x: x[0])
    chosen = None
    for _, order, thresholds, result, sim in pool:
        profile = dataclasses.replace(
            build_profile(per_exit, thresholds, exit_rule=rule), fusion=base.fusion)
        planned = policy_from_config(profile, cfg.scheduler).plan(fusion.modalities).order
        if len(planned) < len(order):  # a modality skipped at this lambda: the order it has when it runs
            planned = policy_from_config(profile, every).plan(fusion.modalities).order
        if planned == order:
            chosen = (order, thresholds, result, sim)
            break
    if chosen is None:
        order, sim = tuple(candidates[0][1]), candidates[0][4]
        never = THRESHOLD_GRID[rule][0]
        thresholds = {m: never for m in fusion.modalities} | {FUSION_KEY: never} | ({RUNG_KEY: never} if rung else {})
        chosen = (order, thresholds, sim.run(thresholds), sim)
    risk = None
    if cfg.scheduler.calibration_criterion == "risk_control":  # LTT on disagreement, from the no-regret point
        order, thresholds, _, sim = chosen
        risk = risk_controlled_shift(sim, thresholds, cfg.scheduler.calibration_alpha, cfg.scheduler.calibration_delta)
        chosen = (order, risk.thresholds, sim.run(risk.thresholds), sim)
    make_profile(cfg, dataset, meter, energy_samples, progress, thresholds=chosen[1], limit=limit,
                 records=records, energy=energy, rung=rung)  # the one kept
    order, thresholds, result, sim = chosen
    pred, _ = sim.predictions(thresholds)
    report = {
        "order": list(order), "thresholds": thresholds, "rule": rule, "val_samples": int(labels.shape[0]),
        "val_full_accuracy": sim.full_accuracy(), "val_accuracy": result.accuracy, "val_macs": result.macs,
        "full_macs": sim.checks[-1][2], "shares": result.shares, "precision": result.precision,
        "max_drop": cfg.scheduler.calibration_drop, "min_precision": cfg.scheduler.calibration_precision,
        "max_regret": cfg.scheduler.calibration_regret,
        "criterion": cfg.scheduler.calibration_criterion,
        "val_disagreement": float((pred != sim.full_predictions()).mean()),
        "risk_control": None if risk is None else {"alpha": risk.alpha, "delta": risk.delta, "shift": risk.shift,
                                                    "pvalue": risk.pvalue},
        "orders": {"->".join(c[1]): {"val_macs": c[0], "thresholds": c[2]} for c in candidates},
        "rung": rung, "val_escalated": result.shares.get(RUNG_KEY, 0.0),
    }
    if progress:
        print(json.dumps(report, indent=1))
    return report


def save_thresholds(cfg: Config, dataset: str, thresholds: Mapping[str, float]) -> Path:
    """Write ``thresholds`` (e.g. online-recalibrated ones) into the exit profile the engine loads: the
    bundle's ``profile.json`` (its manifest's sha256 updated, so the bundle still verifies) with
    ``engine.bundle`` set, else the checkpoints' profile. Only the thresholds change: the profiled
    (a, p, c) stay those of calibration, as they do while the thresholds move online (no re-plan).

    Returns:
        The profile file written.

    Raises:
        ValueError: a threshold key the profile does not have.
    """
    from exitflow.encoders.checkpoint import file_sha256
    from exitflow.pipeline.artifacts import profile_path, weight_files
    from exitflow.pipeline.bundles.manifest import PROFILE_NAME, write_manifest
    from exitflow.pipeline.inference.loading import bundle_of
    from exitflow.scheduler.profile import fingerprint_checkpoints, load_profile

    manifest = bundle_of(cfg)
    if manifest is not None:
        path, weights = manifest.profile_path(), manifest.weight_files()
    else:
        path = Path(cfg.scheduler.profile) if cfg.scheduler.profile else profile_path(cfg, dataset)
        weights = weight_files(cfg, dataset)
    profile = load_profile(path, fingerprint_checkpoints(weights))
    unknown = sorted(set(thresholds) - set(profile.thresholds))
    if unknown:
        raise ValueError(f"thresholds {unknown} are not in the profile {path} (it has {sorted(profile.thresholds)})")
    updated = dataclasses.replace(profile, thresholds={**profile.thresholds, **{k: float(v) for k, v in thresholds.items()}})
    tmp = path.with_name(path.name + ".tmp")
    updated.save(tmp)
    os.replace(tmp, path)
    if manifest is not None:
        write_manifest(dataclasses.replace(manifest, files={**manifest.files, PROFILE_NAME: file_sha256(path)}))
    return path
