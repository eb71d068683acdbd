"""The null meter: windows work, but no energy is known.

``end_window`` returns ``energy_mj=None`` and ``avg_power_mw=None`` (never 0, which would read as
"free"), ``source="none"``, ``estimated=True`` and the real wall-clock duration. Consumers treat
``None`` as "not measured". Use it to switch measurement off or where no meter is wanted.
"""

from __future__ import annotations

from exitflow.devices.base import PowerMeter
from exitflow.devices.measurement import Measurement, make_measurement


class NullMeter(PowerMeter):
    """A meter that measures time only."""

    kind = "null"

    def _snapshot(self) -> float:
        return self._clock()

    def _measure(self, name: str, start: float, end: float) -> Measurement:
        return make_measurement(name, None, end - start, "none", True)

    def describe(self) -> str:
        return "null: no power measurement; energy_mj is None for every window (durations are real)"
