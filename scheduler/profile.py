"""Exit profiles: accuracy a, exit probability p and cost c of every (modality, exit), plus fusion.

A profile is measured once on a validation split (``exitflow profile`` feeds
:func:`build_profile` with per-sample, per-exit arrays) and saved as JSON together with the
schema version and a fingerprint of the checkpoints it was made for. Loading it for other
checkpoints raises :class:`ProfileMismatchError`.

Conventions:
    - ``accuracy`` is the exit's accuracy over every profiled sample (the paper's a).
    - ``exit_prob`` is the fraction of the samples *reaching* the exit (none of the modality's
      earlier exits passed) that pass the threshold there (the paper's p, at the thresholds in
      force).
    - ``macs`` and ``energy_mj`` are *cumulative within the modality*: the cost of running the
      modality from its input through this exit, as the engine does (all earlier exits
      evaluated). The cost of the segment between two exits is the difference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exitflow.scheduler.errors import ProfileFormatError, ProfileMismatchError
from exitflow.scheduler.rules import check_rule, passes

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ExitProfile:
    """Measured figures of one encoder exit.

    Attributes:
        modality: Modality name, e.g. ``"image"``.
        exit_index: 0-based index of the exit in its encoder.
        layer: Backbone layer after which the exit sits (1-based), if known.
        accuracy: Accuracy of this exit over all profiled samples, in [0, 1].
        exit_prob: P(pass the threshold here | reached here), in [0, 1].
        macs: Cumulative multiply-accumulates per sample within the modality through this exit.
        energy_mj: Mean cumulative energy per sample within the modality through this exit, or
            None when energy was not measured.
        n_reached: Number of profiled samples that reached this exit.
        accuracy_exited: Accuracy over the samples that exit here, None when none do.
        latency_ms: Mean cumulative time per sample within the modality through this exit on the
            backend in use (batch 1, a call's fixed cost included), or None when not measured.
    """

    modality: str
    exit_index: int
    accuracy: float
    exit_prob: float
    macs: float
    energy_mj: float | None = None
    layer: int | None = None
    n_reached: int = 0
    accuracy_exited: float | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class FusionProfile:
    """Measured figures of the fusion exit over one set of modalities.

    Attributes:
        modalities: The fused modalities, sorted.
        accuracy: Accuracy of the fusion head on that set, in [0, 1].
        macs: MACs of the fusion step alone (the encoders are counted in their exits).
        energy_mj: Mean energy of the fusion step alone, or None.
        latency_ms: Mean time of the fusion step alone on the backend in use, or None.
    """

    modalities: tuple[str, ...]
    accuracy: float
    macs: float
    energy_mj: float | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class Profile:
    """Every exit's (a, p, c) for one set of checkpoints, thresholds and device.

    Attributes:
        exits: Modality -> its exits in depth order.
        fusion: Fusion exits, one per profiled modality set.
        exit_rule: The rule the thresholds belong to (see :mod:`scheduler.rules`).
        thresholds: Modality -> threshold in force when ``exit_prob`` was measured.
        fingerprint: :func:`fingerprint_checkpoints` of the checkpoints profiled, or None.
        energy_source: Where ``energy_mj`` came from (a meter's ``source``), or None.
        energy_estimated: Whether the energy figures are estimates.
        device: Free-text name of the machine profiled on.
        n_samples: Number of profiled samples.
        schema_version: JSON schema version.
        rung: The last rung chosen at calibration (``encoders/last_rung.py``): ``{"model": "lf", "weight": w,
            "sha256": <its weights' hash>}``, or None (no rung: the walk's final fusion answers the rest).
    """

    exits: dict[str, tuple[ExitProfile, ...]]
    fusion: tuple[FusionProfile, ...] = ()
    exit_rule: str = "entropy"
    thresholds: dict[str, float] = field(default_factory=dict)
    fingerprint: str | None = None
    energy_source: str | None = None
    energy_estimated: bool | None = None
    device: str | None = None
    n_samples: int = 0
    schema_version: int = SCHEMA_VERSION
    rung: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.exits:
            raise ValueError("a profile needs at least one modality with exits, got none")
        for modality, exits in self.exits.items():
            if not exits:
                raise ValueError(f"modality {modality!r} has no exits in the profile")
            for j, ex in enumerate(exits):
                if ex.exit_index != j or ex.modality != modality:
                    raise ValueError(
                        f"exits of {modality!r} must be listed in depth order with exit_index 0..E-1, "
                        f"found {ex.modality!r}/{ex.exit_index} at position {j}"
                    )
                if not (0.0 <= ex.accuracy <= 1.0 and 0.0 <= ex.exit_prob <= 1.0):
                    raise ValueError(f"{modality}/{j}: accuracy and exit_prob must lie in [0, 1], got {ex}")
                if ex.macs < 0 or (ex.energy_mj is not None and ex.energy_mj < 0) or (
                        ex.latency_ms is not None and ex.latency_ms < 0):
                    raise ValueError(f"{modality}/{j}: costs must be >= 0, got {ex}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.exits)

    def num_exits(self, modality: str) -> int:
        return len(self._exits_of(modality))

    def _exits_of(self, modality: str) -> tuple[ExitProfile, ...]:
        try:
            return self.exits[modality]
        except KeyError:
            raise ValueError(
                f"modality {modality!r} is not in the profile (it has {self.modalities})"
            ) from None

    def has_energy(self) -> bool:
        """True when every exit and fusion entry carries an energy figure."""
        return all(ex.energy_mj is not None for exs in self.exits.values() for ex in exs) and all(
            f.energy_mj is not None for f in self.fusion
        )

    def cumulative_costs(self, modality: str, unit: str) -> list[float]:
        """Cumulative cost through each exit of ``modality`` in ``unit`` (``"macs"``, ``"mj"`` or ``"ms"``)."""
        exits = self._exits_of(modality)
        if unit == "macs":
            return [float(ex.macs) for ex in exits]
        if unit == "mj":
            costs_mj = []
            for ex in exits:
                if ex.energy_mj is None:
                    raise ValueError(
                        f"cost_unit 'mj' needs measured energy, but the profile of {modality!r} has none; "
                        "profile with a power meter or use cost_unit 'macs'"
                    )
                costs_mj.append(float(ex.energy_mj))
            return costs_mj
        if unit == "ms":
            if any(ex.latency_ms is None for ex in exits):
                raise ValueError(
                    f"cost_unit 'ms' needs measured step times, but the profile of {modality!r} has none; "
                    "use engine.backend: onnxruntime (it measures them) or cost_unit 'macs'"
                )
            return [float(ex.latency_ms) for ex in exits if ex.latency_ms is not None]
        raise ValueError(f"cost unit must be 'macs', 'mj' or 'ms', got {unit!r}")

    def fusion_for(self, modalities: Iterable[str]) -> FusionProfile | None:
        """The fusion entry for exactly ``modalities``; else the largest profiled subset of them."""
        wanted = frozenset(modalities)
        best: FusionProfile | None = None
        for entry in self.fusion:
            if frozenset(entry.modalities) == wanted:
                return entry
            if frozenset(entry.modalities) <= wanted and (
                best is None or len(entry.modalities) > len(best.modalities)
            ):
                best = entry
        return best

    def check_fingerprint(self, expected: str | None) -> None:
        """Raise ProfileMismatchError when ``expected`` differs from this profile's fingerprint."""
        if expected is None or self.fingerprint is None:
            return
        if expected != self.fingerprint:
            raise ProfileMismatchError(
                f"the exit profile was made for checkpoints {self.fingerprint[:12]}..., but the loaded "
                f"checkpoints are {expected[:12]}...; re-run `exitflow profile` for these checkpoints"
            )

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exits"] = {m: [asdict(ex) for ex in exs] for m, exs in self.exits.items()}
        data["fusion"] = [{**asdict(f), "modalities": list(f.modalities)} for f in self.fusion]
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Profile:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ProfileFormatError(
                f"profile schema version {version!r} is not the supported {SCHEMA_VERSION}; "
                "re-run `exitflow profile` with this version of exitflow"
            )
        try:
            exits = {m: tuple(ExitProfile(**ex) for ex in exs) for m, exs in dict(data["exits"]).items()}
            fusion = tuple(
                FusionProfile(**{**f, "modalities": tuple(f["modalities"])}) for f in data.get("fusion", [])
            )
            rest = {k: v for k, v in data.items() if k not in ("exits", "fusion")}
            return cls(exits=exits, fusion=fusion, **rest)
        except (KeyError, TypeError) as e:
            raise ProfileFormatError(f"profile is missing or has unknown fields: {e}") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json_dict(), indent=1) + "\n", encoding="utf-8")


def load_profile(path: str | Path, expected_fingerprint: str | None = None) -> Profile:
    """Read a profile from JSON and check it against the checkpoints' fingerprint.

    Raises:
        ProfileFormatError: unreadable file, bad JSON, other schema version or missing fields.
        ProfileMismatchError: ``expected_fingerprint`` differs from the profile's.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ProfileFormatError(f"no exit profile at {path}; create one with `exitflow profile`") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ProfileFormatError(f"cannot read exit profile {path}: {e}") from e
    if not isinstance(data, dict):
        raise ProfileFormatError(f"exit profile {path} must hold a JSON object, found {type(data).__name__}")
    profile = Profile.from_json_dict(data)
    profile.check_fingerprint(expected_fingerprint)
    return profile


def fingerprint_checkpoints(paths: Iterable[str | Path]) -> str:
    """SHA-256 over the names and bytes of ``paths`` (order-independent), as hex."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        if not path.is_file():
            raise ProfileFormatError(f"cannot fingerprint {path}: not a file")
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExitArrays:
    """Per-sample, per-exit measurements of one modality, the input of :func:`build_profile`.

    Attributes:
        scores: (N, E) rule scores (e.g. normalized entropy) of every sample at every exit.
        correct: (N, E) whether each exit's prediction was right.
        macs_cumulative: (E,) or (N, E) cumulative MACs through each exit (``ExitOutput.macs``).
        energy_mj_step: (N, E) energy of each step (the meter window from the previous exit to
            this one), or None.
        layers: Backbone layer of each exit, or None.
    """

    scores: np.ndarray
    correct: np.ndarray
    macs_cumulative: np.ndarray
    energy_mj_step: np.ndarray | None = None
    layers: tuple[int, ...] | None = None


def _exit_probs(scores: np.ndarray, rule: str, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p per exit, samples reaching per exit, (N, E) mask of the exit each sample takes)."""
    passed = np.asarray(passes(rule, scores, threshold), dtype=bool)  # (N, E)
    n, e = scores.shape
    reached = np.ones(n, dtype=bool)  # (N,)
    taken = np.zeros((n, e), dtype=bool)  # (N, E)
    probs, n_reached = np.zeros(e), np.zeros(e, dtype=np.int64)
    for j in range(e):
        n_reached[j] = int(reached.sum())
        exits_here = reached & passed[:, j]  # (N,)
        taken[:, j] = exits_here
        probs[j] = exits_here.sum() / n_reached[j] if n_reached[j] else 0.0
        reached = reached & ~passed[:, j]
    return probs, n_reached, taken


def build_profile(
    per_exit: Mapping[str, ExitArrays],
    thresholds: Mapping[str, float],
    exit_rule: str = "entropy",
    fusion: Mapping[tuple[str, ...], tuple[np.ndarray, float, float | None]] | None = None,
    fingerprint: str | None = None,
    energy_source: str | None = None,
    energy_estimated: bool | None = None,
    device: str | None = None,
) -> Profile:
    """Turn per-sample arrays into a :class:`Profile` at the given thresholds (pure numpy).

    Args:
        per_exit: Modality -> its :class:`ExitArrays` (all with the same N).
        thresholds: Modality -> threshold under ``exit_rule``.
        exit_rule: One of :data:`scheduler.rules.EXIT_RULES`.
        fusion: Modality set -> ``(correct (N,), macs, energy_mj or None)`` of the fusion step.
        fingerprint, energy_source, energy_estimated, device: Stored as they are.

    Raises:
        ValueError: shapes disagree, a threshold is missing, or arrays hold NaN.
    """
    check_rule(exit_rule)
    exits: dict[str, tuple[ExitProfile, ...]] = {}
    n_samples: int | None = None
    for modality, arrays in per_exit.items():
        scores = np.asarray(arrays.scores, dtype=np.float64)
        correct = np.asarray(arrays.correct, dtype=bool)
        if scores.ndim != 2 or correct.shape != scores.shape:
            raise ValueError(
                f"{modality}: scores and correct must both be (N, E), got {scores.shape} and {correct.shape}"
            )
        if np.isnan(scores).any():
            raise ValueError(f"{modality}: scores hold NaN; check the exit heads' logits")
        if n_samples is not None and scores.shape[0] != n_samples:
            raise ValueError(f"{modality}: {scores.shape[0]} samples, other modalities have {n_samples}")
        n_samples, num_exits = scores.shape
        if modality not in thresholds:
            raise ValueError(
                f"no threshold for modality {modality!r}; got thresholds for {sorted(thresholds)}"
            )
        macs = np.broadcast_to(np.asarray(arrays.macs_cumulative, dtype=np.float64), scores.shape)
        energy_cum = None
        if arrays.energy_mj_step is not None:
            energy_step = np.asarray(arrays.energy_mj_step, dtype=np.float64)
            if energy_step.shape != scores.shape:
                raise ValueError(
                    f"{modality}: energy_mj_step must be {scores.shape}, got {energy_step.shape}"
                )
            energy_cum = np.cumsum(energy_step, axis=1).mean(axis=0)  # (E,)
        probs, n_reached, taken = _exit_probs(scores, exit_rule, float(thresholds[modality]))
        rows = []
        for j in range(num_exits):
            n_taken = int(taken[:, j].sum())
            rows.append(
                ExitProfile(
                    modality=modality,
                    exit_index=j,
                    layer=None if arrays.layers is None else int(arrays.layers[j]),
                    accuracy=float(correct[:, j].mean()),
                    exit_prob=float(probs[j]),
                    macs=float(macs[:, j].mean()),
                    energy_mj=None if energy_cum is None else float(energy_cum[j]),
                    n_reached=int(n_reached[j]),
                    accuracy_exited=float(correct[taken[:, j], j].mean()) if n_taken else None,
                )
            )
        exits[modality] = tuple(rows)
    fusion_rows = []
    for mods, (correct_f, macs_f, energy_f) in (fusion or {}).items():
        unknown = set(mods) - set(exits)
        if unknown:
            raise ValueError(f"fusion set {mods} names modalities without exits: {sorted(unknown)}")
        fusion_rows.append(
            FusionProfile(
                modalities=tuple(sorted(mods)),
                accuracy=float(np.asarray(correct_f, dtype=bool).mean()),
                macs=float(macs_f),
                energy_mj=None if energy_f is None else float(energy_f),
            )
        )
    return Profile(
        exits=exits,
        fusion=tuple(fusion_rows),
        exit_rule=exit_rule,
        thresholds={m: float(thresholds[m]) for m in exits},
        fingerprint=fingerprint,
        energy_source=energy_source,
        energy_estimated=energy_estimated,
        device=device,
        n_samples=int(n_samples or 0),
    )
