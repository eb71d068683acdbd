"""Online self-recalibration without labels: hold a target rate of disagreement with the full path.

A robot enters a room nobody calibrated on. On a small, seeded share of samples the engine also runs
the full path (every modality to its last exit, then fusion) as a *shadow* and reports whether the
early answer disagreed with the full one. :class:`OnlineRecalibrator` turns that 0/1 signal into one
scalar, the *shift* ``s``, that scales every calibrated threshold at once (the same form as the budget's
lambda coupling, :func:`scheduler.rules.couple_threshold`, with ratio ``r = exp(s)``)::

    entropy   (exit when score <= t):  t(s) = min(1, t0 * exp(s))
    max_prob  (exit when score >= t):  t(s) = max(0, 1 - (1 - t0) * exp(s))
    s <= min_shift:                    every threshold "never" (no early exit: the walk is the full path)

``s > 0`` loosens (earlier exits, fewer MACs), ``s < 0`` tightens. After each shadowed sample ``t``
with disagreement ``err_t`` in {0, 1} and target ``alpha`` (adaptive conformal inference, Gibbs &
Candes 2021; online risk control, Feldman et al. 2023)::

    s_{t+1} = min(max_shift, s_t + step * (alpha - err_t))

Guarantee (deterministic, for any stream, shifted or adversarial): at ``s <= min_shift`` nothing exits
early, so ``err = 0`` and ``s`` can only rise; hence ``s_t >= min_shift - step`` always. Summing the
update over the ``T`` shadowed samples after warm-up (constant ``step``; clipping at ``max_shift``
only removes upward moves)::

    (1/T) * sum_t err_t  <=  alpha + (s_start - min_shift + step) / (step * T)

so the long-run disagreement rate on shadowed samples is at most ``alpha`` (the slack shrinks as 1/T;
:meth:`OnlineRecalibrator.status` reports it as ``bound``). The shadow choice is a seeded hash of the
sample counter, independent of the sample's content, so the shadowed samples are a uniform sample of
the stream: on a stream whose difficulty does not change faster than the controller moves, the rate
over all samples tracks the same target. The premise is that the walk with no early exits is the full
path (no modality skipped by utility); the shadow then defines "the full answer".

Determinism: the state is a function of the seed and the sequence of ``err_t``; a replay of the same
stream makes the same shadow choices and the same threshold moves (no wall clock anywhere).

Driving loop (the engine side lives in ``pipeline/inference/shadow.py``)::

    rec = OnlineRecalibrator(policy.base_thresholds, rule="entropy", settings=RecalibrationSettings())
    for sample in stream:
        shadow = rec.begin_sample()               # advances the seeded counter
        decision = engine.process(sample)
        if shadow:
            full = full_path.process(sample)
            rec.observe(decision.prediction != full.prediction)
            policy.set_thresholds(rec.thresholds)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

NEVER = {"entropy": -1.0, "max_prob": 2.0}  # thresholds no score passes (the calibration grid's first values)
RECENT_WINDOW = 200  # shadowed samples behind ``recent_disagreement``
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class RecalibrationSettings:
    """How the online recalibration samples shadows and moves thresholds.

    Attributes:
        target_disagreement: Target rate alpha of early answers that differ from the full path's.
        shadow_share: Share of samples that also run the full path after warm-up.
        warmup_samples: Samples (all, not only shadowed) at the start that use ``warmup_share``/``warmup_step``.
        warmup_share: Shadow share during warm-up (the controller learns the room quickly).
        step: Change of the shift (log threshold ratio) per shadowed sample, times ``alpha - err``.
        warmup_step: Step during warm-up; None = ``step``.
        min_shift: At or below this shift no early exit fires (the full path).
        max_shift: The shift never exceeds this (how much looser than calibrated it may get).
        seed: Seed of the shadow choice.

    Raises:
        ValueError: a value out of its range (each message names the field and the range).
    """

    target_disagreement: float = 0.005
    shadow_share: float = 0.03
    warmup_samples: int = 200
    warmup_share: float = 0.2
    step: float = 0.5
    warmup_step: float | None = None
    min_shift: float = -4.0
    max_shift: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("target_disagreement", "shadow_share", "warmup_share"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not 0.0 < self.target_disagreement < 1.0:
            raise ValueError(f"target_disagreement must be in (0, 1), got {self.target_disagreement!r}")
        for name in ("step", "warmup_step"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 < value <= 10.0):
                raise ValueError(f"{name} must be in (0, 10], got {value!r}")
        if isinstance(self.warmup_samples, bool) or not isinstance(self.warmup_samples, int) or self.warmup_samples < 0:
            raise ValueError(f"warmup_samples must be an integer >= 0, got {self.warmup_samples!r}")
        if not (math.isfinite(self.min_shift) and math.isfinite(self.max_shift) and self.min_shift < 0.0 <= self.max_shift):
            raise ValueError(
                f"need min_shift < 0 <= max_shift (0 = the calibrated thresholds), got {self.min_shift!r}, {self.max_shift!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= _MASK64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")


def splitmix64(x: int) -> int:
    """SplitMix64's output function: a well-mixed 64-bit hash of ``x`` (same on every platform)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def shadow_draw(seed: int, counter: int) -> float:
    """A uniform number in [0, 1) for sample ``counter`` of a stream seeded with ``seed``."""
    return (splitmix64((seed * 0xD1B54A32D192ED03 + counter) & _MASK64) >> 11) / float(1 << 53)


def shifted_threshold(rule: str, threshold: float, shift: float, min_shift: float) -> float:
    """``threshold`` scaled by ``exp(shift)`` under ``rule`` (module doc); "never" at ``shift <= min_shift``."""
    never = NEVER[rule]
    if shift <= min_shift:
        return never
    ratio = math.exp(shift)
    if rule == "entropy":
        return threshold if threshold < 0.0 else min(1.0, threshold * ratio)
    return threshold if threshold > 1.0 else max(0.0, 1.0 - (1.0 - threshold) * ratio)


class OnlineRecalibrator:
    """The controller of the module doc: seeded shadow choice, shift update, thresholds, status.

    Args:
        base_thresholds: The calibrated thresholds (modality and ``fusion`` keys), the shift's origin.
        rule: The exit rule they belong to: ``entropy`` or ``max_prob``.
        settings: :class:`RecalibrationSettings`.
        shift: Initial shift (0 = the calibrated thresholds; e.g. a value a previous run saved).

    Raises:
        ValueError: an unsupported rule, no thresholds, or an initial shift above ``max_shift``.
    """

    def __init__(
        self, base_thresholds: Mapping[str, float], rule: str, settings: RecalibrationSettings | None = None,
        shift: float = 0.0,
    ):
        if rule not in NEVER:
            raise ValueError(
                f"online recalibration moves entropy or max_prob thresholds, not {rule!r}; "
                "set scheduler.exit_rule to entropy or max_prob, or recalibration.enabled: false"
            )
        if not base_thresholds:
            raise ValueError("online recalibration needs the calibrated thresholds (run `exitflow calibrate`)")
        self.settings = settings or RecalibrationSettings()
        if not (math.isfinite(shift) and shift <= self.settings.max_shift):
            raise ValueError(f"initial shift must be finite and <= max_shift ({self.settings.max_shift}), got {shift!r}")
        self.rule = rule
        self.base_thresholds = {k: float(v) for k, v in base_thresholds.items()}
        self.shift = float(shift)
        self.samples = 0  # samples seen (begin_sample calls)
        self.shadowed = 0  # observations (shadowed samples)
        self.disagreements = 0
        self.shadowed_after_warmup = 0
        self.disagreements_after_warmup = 0
        self.held = 0  # outcomes observed while held (see observe)
        self._shift_at_warmup_end = float(shift) if self.settings.warmup_samples == 0 else None
        self._recent: deque[int] = deque(maxlen=RECENT_WINDOW)
        self._thresholds = self._compute()

    @property
    def warming_up(self) -> bool:
        """Whether the next sample is still in warm-up."""
        return self.samples < self.settings.warmup_samples

    @property
    def current_share(self) -> float:
        """The shadow share in force for the next sample."""
        warm = self.samples < self.settings.warmup_samples
        return self.settings.warmup_share if warm else self.settings.shadow_share

    @property
    def current_step(self) -> float:
        """The step of the next :meth:`observe` (of the sample :meth:`begin_sample` counted last)."""
        warm = 0 < self.samples <= self.settings.warmup_samples
        step = self.settings.warmup_step if warm and self.settings.warmup_step is not None else self.settings.step
        return float(step)

    @property
    def thresholds(self) -> dict[str, float]:
        """Thresholds in force (a copy): the calibrated ones moved by the shift."""
        return dict(self._thresholds)

    def _compute(self) -> dict[str, float]:
        return {k: shifted_threshold(self.rule, t, self.shift, self.settings.min_shift)
                for k, t in self.base_thresholds.items()}

    def begin_sample(self, held: bool = False) -> bool:
        """Count one sample of the stream; whether it is shadowed (a seeded draw, no wall clock).

        ``held``: another controller (the energy budget) owns the thresholds now, so shadows only measure
        and the steady ``shadow_share`` applies even in warm-up (the warm-up share would spend the budget).
        """
        share = self.settings.shadow_share if held else self.current_share
        shadow = shadow_draw(self.settings.seed, self.samples) < share
        self.samples += 1
        if self._shift_at_warmup_end is None and self.samples > self.settings.warmup_samples:
            self._shift_at_warmup_end = self.shift
        return shadow

    def observe(self, disagreed: bool, hold: bool = False) -> dict[str, float]:
        """One shadowed sample's outcome (early answer != full answer); returns the new thresholds.

        ``hold`` counts the outcome in the measured rates but leaves the shift (while another controller,
        the energy budget, owns the thresholds); held outcomes are outside the guarantee's count.
        """
        err = 1 if disagreed else 0
        step = self.current_step
        self.shadowed += 1
        self.disagreements += err
        self._recent.append(err)
        if hold:
            self.held += 1
            return self.thresholds
        if self._shift_at_warmup_end is not None:
            self.shadowed_after_warmup += 1
            self.disagreements_after_warmup += err
        self.shift = min(self.settings.max_shift, self.shift + step * (self.settings.target_disagreement - err))
        self._thresholds = self._compute()
        return self.thresholds

    def bound(self) -> float | None:
        """The guarantee's slack after warm-up, ``(s_start - min_shift + step) / (step * T)`` (None before)."""
        if self._shift_at_warmup_end is None or self.shadowed_after_warmup == 0:
            return None
        step = self.settings.step
        return (self._shift_at_warmup_end - self.settings.min_shift + step) / (step * self.shadowed_after_warmup)

    def status(self) -> dict[str, Any]:
        """State for the live view, ``/status``, metrics and recordings (JSON-safe)."""
        measured = self.disagreements / self.shadowed if self.shadowed else None
        after = (self.disagreements_after_warmup / self.shadowed_after_warmup
                 if self.shadowed_after_warmup else None)
        return {
            "target_disagreement": self.settings.target_disagreement,
            "measured_disagreement": measured,
            "disagreement_after_warmup": after,
            "recent_disagreement": sum(self._recent) / len(self._recent) if self._recent else None,
            "guarantee_slack": self.bound(),
            "shift": self.shift,
            "thresholds": self.thresholds,
            "calibrated_thresholds": dict(self.base_thresholds),
            "shadow_share": self.current_share,
            "warming_up": self.warming_up,
            "samples": self.samples,
            "shadowed": self.shadowed,
            "disagreements": self.disagreements,
            "held": self.held,
        }

    def settings_dict(self) -> dict[str, Any]:
        return asdict(self.settings)
