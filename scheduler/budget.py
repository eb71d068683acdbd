"""Closed-loop energy budget: a PI controller on log(lambda) driven by measured energy.

Two budget kinds:

- ``mj_per_sample``: each update compares the energy the last sample took with the budget.
- ``power_w``: each update adds (energy, duration) to a sliding window of ``window_s`` seconds
  and compares the window's average power with the budget. Pass as ``duration_s`` the wall time
  the sample occupied (time since the previous update if idle time should count).

Control law, with relative error ``e = (budget - measured) / budget`` (at most 1; clipped below
at -:data:`ERROR_CLIP` against outliers, and otherwise not clipped, so that the integrator's
rest point is the *mean* energy equal to the budget)::

    log(lam) = log(lam_ref) + kp * e + ki * I,    I <- I + e

Too much energy makes e negative and lowers lambda, so the policy picks cheaper orders, skips
more and (with threshold coupling) exits earlier. Lambda is clamped to [lam_min, lam_max]; the
integrator only moves while the output is inside the bounds or the error pulls it back in
(anti-windup). ``set_budget`` changes the target while running; the integrator is kept.

When the per-sample budget is below the cost of the cheapest exit (``cheapest_mj``) no lambda
can meet it: the controller emits a :class:`BudgetWarning`, sets ``cheapest_mode`` (the policy
then runs only the cheapest first exit) and holds lambda at ``lam_min``. Raising the budget
above that cost leaves the mode.
"""

from __future__ import annotations

import math
import warnings
from collections import deque

from exitflow.scheduler.errors import BudgetWarning
from exitflow.scheduler.utility import LAMBDA_MAX, LAMBDA_MIN, check_lambda

ERROR_CLIP = 10.0  # lower clip of the relative error (a sample at 11x the budget counts as 11x)


def _positive(value: float | None, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _positive_or_none(value: float | None, name: str) -> float | None:
    return None if value is None else _positive(value, name)


class BudgetController:
    """PI control of lambda towards an energy budget.

    Args:
        mj_per_sample: Energy budget per sample in millijoules (exclusive with ``power_w``).
        power_w: Average power budget in watts over ``window_s``.
        window_s: Averaging window of the power budget in seconds.
        lam_ref: Lambda at zero error and zero integral (the starting lambda).
        lam_min, lam_max: Bounds of lambda, inside [LAMBDA_MIN, LAMBDA_MAX].
        kp, ki: Proportional and integral gains on the relative error.
        cheapest_mj: Energy of the cheapest exit per sample, to detect unreachable budgets.

    Raises:
        ValueError: no or both budgets, a non-positive budget, lambda bounds out of range.
    """

    def __init__(
        self,
        mj_per_sample: float | None = None,
        power_w: float | None = None,
        window_s: float = 5.0,
        lam_ref: float = 1.0,
        lam_min: float = LAMBDA_MIN,
        lam_max: float = LAMBDA_MAX,
        kp: float = 0.5,
        ki: float = 0.15,
        cheapest_mj: float | None = None,
    ):
        self.lam_min, self.lam_max = check_lambda(lam_min), check_lambda(lam_max)
        if self.lam_min > self.lam_max:
            raise ValueError(f"lam_min ({lam_min}) must not exceed lam_max ({lam_max})")
        self.lam_ref = check_lambda(lam_ref)
        if not self.lam_min <= self.lam_ref <= self.lam_max:
            raise ValueError(
                f"lam_ref must lie in [lam_min, lam_max] = [{lam_min}, {lam_max}], got {lam_ref}"
            )
        if kp < 0 or ki < 0:
            raise ValueError(f"gains must be >= 0, got kp={kp}, ki={ki}")
        self.window_s = _positive(window_s, "window_s")
        self.kp, self.ki = float(kp), float(ki)
        self.cheapest_mj = _positive_or_none(cheapest_mj, "cheapest_mj")
        self._integral = 0.0
        self._lam = self.lam_ref
        self._window: deque[tuple[float, float]] = deque()
        self._window_s_sum = 0.0
        self._window_mj_sum = 0.0
        self.samples = 0
        self.total_energy_mj = 0.0
        self.cheapest_mode = False
        self.set_budget(mj_per_sample=mj_per_sample, power_w=power_w)

    @property
    def lam(self) -> float:
        return self._lam

    @property
    def mode(self) -> str:
        return "mj_per_sample" if self.mj_per_sample is not None else "power_w"

    @property
    def average_mj(self) -> float:
        """Mean energy per sample since the start."""
        return self.total_energy_mj / self.samples if self.samples else math.nan

    def set_budget(self, mj_per_sample: float | None = None, power_w: float | None = None) -> None:
        """Set a new budget (exactly one of the two); takes effect at the next update."""
        if (mj_per_sample is None) == (power_w is None):
            raise ValueError(
                f"give exactly one budget: mj_per_sample or power_w (got {mj_per_sample!r}, {power_w!r})"
            )
        self.mj_per_sample = _positive_or_none(mj_per_sample, "mj_per_sample")
        self.power_w = _positive_or_none(power_w, "power_w")
        # the budget in its own unit (mJ per sample or W): exactly one of the two is set
        self._budget = self.mj_per_sample if self.mj_per_sample is not None else _positive(power_w, "power_w")
        self._window.clear()
        self._window_s_sum = self._window_mj_sum = 0.0
        below = (
            self.mj_per_sample is not None
            and self.cheapest_mj is not None
            and self.mj_per_sample < self.cheapest_mj
        )
        if below:
            warnings.warn(
                f"energy budget {self.mj_per_sample:.4g} mJ/sample is below the cheapest exit "
                f"({self.cheapest_mj:.4g} mJ); running in cheapest-exit mode. Raise the budget to leave it.",
                BudgetWarning,
                stacklevel=2,
            )
            self._lam = self.lam_min
        self.cheapest_mode = below

    def _measured(self, energy_mj: float, duration_s: float) -> tuple[float, float]:
        """(measured, budget) in the budget's unit."""
        if self.mj_per_sample is not None:
            return energy_mj, self._budget
        self._window.append((energy_mj, duration_s))
        self._window_mj_sum += energy_mj
        self._window_s_sum += duration_s
        while len(self._window) > 1 and self._window_s_sum - self._window[0][1] >= self.window_s:
            old_mj, old_s = self._window.popleft()
            self._window_mj_sum -= old_mj
            self._window_s_sum -= old_s
        power_w = self._window_mj_sum / self._window_s_sum / 1000.0 if self._window_s_sum > 0 else 0.0
        return power_w, self._budget

    def update(self, energy_mj: float, duration_s: float = 0.0) -> float:
        """Feed one sample's measured energy (and duration); returns the new lambda.

        Raises:
            ValueError: negative or non-finite energy/duration, or a power budget with duration 0.
        """
        if not (math.isfinite(energy_mj) and energy_mj >= 0):
            raise ValueError(f"energy_mj must be finite and >= 0, got {energy_mj!r}")
        if not (math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"duration_s must be finite and >= 0, got {duration_s!r}")
        if self.power_w is not None and duration_s <= 0:
            raise ValueError("a power budget needs each sample's duration_s > 0")
        self.samples += 1
        self.total_energy_mj += energy_mj
        measured, budget = self._measured(energy_mj, duration_s)
        if self.cheapest_mode:
            return self._lam
        error = max(-ERROR_CLIP, (budget - measured) / budget)  # <= 1 since measured >= 0
        log_lo, log_hi = math.log(self.lam_min), math.log(self.lam_max)
        log_lam = math.log(self.lam_ref) + self.kp * error + self.ki * (self._integral + error)
        inside = log_lo <= log_lam <= log_hi
        if inside or (log_lam > log_hi and error < 0) or (log_lam < log_lo and error > 0):
            self._integral += error
        log_lam = math.log(self.lam_ref) + self.kp * error + self.ki * self._integral
        self._lam = math.exp(min(log_hi, max(log_lo, log_lam)))
        return self._lam
