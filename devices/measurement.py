"""The result of one measurement window: energy with its unit, duration, source and honesty flag."""

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
    """

    energy_mj: float | None
    duration_s: float
    avg_power_mw: float | None
    source: str
    estimated: bool
    rails: dict[str, float] = field(default_factory=dict)
    name: str = ""
    notes: tuple[str, ...] = ()

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
        }


def make_measurement(
    name: str,
    energy_mj: float | None,
    duration_s: float,
    source: str,
    estimated: bool,
    rails: dict[str, float] | None = None,
    notes: tuple[str, ...] = (),
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
    return Measurement(
        energy_mj=energy_mj,
        duration_s=duration_s,
        avg_power_mw=avg_power_mw,
        source=source,
        estimated=estimated,
        rails=rails or {},
        name=name,
        notes=notes,
    )
