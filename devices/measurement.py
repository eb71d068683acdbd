"""The result of one measurement window: energy with its unit, duration, source and honesty flag.

Every window splits its total into an *idle* part and a *dynamic* (attributable) part:
``energy_mj = idle_energy_mj + dynamic_energy_mj``. The idle part is the meter's idle floor
(``PowerMeter.idle_floor_mw``: measured with ``calibrate_idle()``, configured, or - for the
estimates - the model's idle term) times the window duration, capped at the total; the dynamic
part is the rest, i.e. what the measured work added on top of a device that would have been
powered anyway. Both are ``None`` when the floor is unknown (a measured meter that was not
calibrated) or nothing was measured (the null meter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Measurement:
    """Energy spent between ``begin_window(name)`` and ``end_window(name)``.

    Attributes:
        energy_mj: Energy of the window in millijoules; ``None`` when the meter measures nothing
            (the null meter). Never negative.
        duration_s: Length of the window in seconds (wall clock, or the virtual clock of the
            replay meter).
        avg_power_mw: ``energy_mj / duration_s`` in milliwatts; ``None`` when either is unknown or
            the duration is zero.
        source: How the number was obtained, e.g. ``"nvml:energy_counter"``,
            ``"nvml:power_sampling"``, ``"rapl"``, ``"jetson:ina3221"``, ``"psutil:estimate"``,
            ``"replay:<trace>"``, ``"mac_model:<profile>"``, ``"none"``.
        estimated: ``True`` when the number comes from a model (CPU-time estimate, MAC model,
            replayed trace) or a counter whose wraparound could not be corrected exactly.
        rails: Energy per rail or zone in millijoules (e.g. ``{"VDD_GPU_SOC": 812.0}``,
            ``{"package-0": ..., "package-0/dram": ...}``, ``{"gpu0": ...}``). Rails can overlap
            (a RAPL core zone lies inside its package), so they need not sum to ``energy_mj``.
        name: The window name.
        notes: Caveats that apply to this window (e.g. an uncorrectable counter wrap).
        idle_energy_mj: The idle floor's share of ``energy_mj`` (floor power x duration, capped at
            the total); ``None`` when the floor is unknown.
        dynamic_energy_mj: ``energy_mj - idle_energy_mj``: the energy attributable to the work in
            the window (>= 0); ``None`` when the floor is unknown.
        idle_basis: Where the idle floor came from (``"measured: 2 s idle before the run"``,
            ``"configured"``, ``"model: ..."``); empty when unknown.
    """

    energy_mj: float | None
    duration_s: float
    avg_power_mw: float | None
    source: str
    estimated: bool
    rails: dict[str, float] = field(default_factory=dict)
    name: str = ""
    notes: tuple[str, ...] = ()
    idle_energy_mj: float | None = None
    dynamic_energy_mj: float | None = None
    idle_basis: str = ""

    @property
    def attributable_energy_mj(self) -> float | None:
        """``dynamic_energy_mj``; the energy a budget on "attributable" energy should count."""
        return self.dynamic_energy_mj

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for decision logs and ``--json`` output)."""
        return {
            "name": self.name,
            "energy_mj": self.energy_mj,
            "duration_s": self.duration_s,
            "avg_power_mw": self.avg_power_mw,
            "source": self.source,
            "estimated": self.estimated,
            "rails": dict(self.rails),
            "notes": list(self.notes),
            "idle_energy_mj": self.idle_energy_mj,
            "dynamic_energy_mj": self.dynamic_energy_mj,
            "idle_basis": self.idle_basis,
        }


def make_measurement(
    name: str,
    energy_mj: float | None,
    duration_s: float,
    source: str,
    estimated: bool,
    rails: dict[str, float] | None = None,
    notes: tuple[str, ...] = (),
    idle_floor_mw: float | None = None,
    idle_basis: str = "",
) -> Measurement:
    """Build a :class:`Measurement`, deriving ``avg_power_mw`` and clamping tiny negative noise.

    Args:
        name: Window name.
        energy_mj: Window energy in mJ, or ``None`` when unknown.
        duration_s: Window duration in seconds (>= 0).
        source: Method tag (see :class:`Measurement`).
        estimated: Whether the number is modelled rather than measured.
        rails: Per-rail energy in mJ.
        notes: Caveats for this window.
        idle_floor_mw: Idle floor power in mW; with it the window is split into idle and
            dynamic energy (see the module docstring). ``None``: the split stays unknown.
        idle_basis: Where the floor came from (kept in the measurement).

    Raises:
        ValueError: When ``energy_mj`` is clearly negative (a meter bug, never a valid result).
    """
    # Kept branch-light: this runs at every end_window (the window budget is 50 us in total).
    if duration_s < 0:
        duration_s = 0.0
    avg_power_mw = None
    if energy_mj is not None:
        if energy_mj < 0:
            if energy_mj < -1e-9:
                raise ValueError(
                    f"window {name!r}: energy_mj={energy_mj} from {source} is negative; meters must never "
                    "report negative energy (this is a bug in the meter, please report it)"
                )
            energy_mj = 0.0
        if duration_s > 0:
            avg_power_mw = energy_mj / duration_s
    if rails:
        rails = {k: (v if v > 0.0 else 0.0) for k, v in rails.items()}
    idle_mj = dynamic_mj = None
    if idle_floor_mw is not None and energy_mj is not None:
        idle_mj = idle_floor_mw * duration_s
        if idle_mj > energy_mj:
            idle_mj = energy_mj
            notes = (*notes, "window drew less than the idle floor over its duration; dynamic energy is 0")
        dynamic_mj = energy_mj - idle_mj
    return Measurement(
        energy_mj=energy_mj,
        duration_s=duration_s,
        avg_power_mw=avg_power_mw,
        source=source,
        estimated=estimated,
        rails=rails or {},
        name=name,
        notes=notes,
        idle_energy_mj=idle_mj,
        dynamic_energy_mj=dynamic_mj,
        idle_basis=idle_basis if idle_mj is not None else "",
    )


def split_idle(m: Measurement, idle_floor_mw: float, idle_basis: str) -> Measurement:
    """``m`` with its idle and dynamic parts filled in from an idle floor in mW.

    Runs at every ``end_window`` of a meter with a floor, so the usual case builds the result
    directly (``m`` is already validated) instead of going through :func:`make_measurement`.
    """
    energy_mj = m.energy_mj
    if energy_mj is None:
        return m
    idle_mj = idle_floor_mw * m.duration_s
    if idle_mj > energy_mj:
        return make_measurement(
            m.name,
            energy_mj,
            m.duration_s,
            m.source,
            m.estimated,
            m.rails,
            m.notes,
            idle_floor_mw,
            idle_basis,
        )
    return Measurement(
        energy_mj, m.duration_s, m.avg_power_mw, m.source, m.estimated, m.rails, m.name, m.notes,
        idle_mj, energy_mj - idle_mj, idle_basis,
    )  # fmt: skip
