"""Planning estimate: energy from multiply-accumulate counts and a device profile's pJ/MAC.

``energy_mj = macs x pj_per_mac x 1e-9 + static_power_mw x duration_s`` (the static term only
when ``include_static`` is set). Use :meth:`MacEnergyModel.estimate` for a one-off figure, or use
the model as a :class:`~devices.base.PowerMeter`: call :meth:`record_macs` as layers run and
every open window collects the MACs recorded while it was open. The pJ/MAC figures of the shipped
profiles are peak-throughput floors (datasheet TDP / peak MAC rate), so real runs cost more.
"""

from __future__ import annotations

import threading

from exitflow.devices.base import PowerMeter
from exitflow.devices.cpu_power import resolve_profile
from exitflow.devices.device_profiles import DeviceProfile, ProfileError
from exitflow.devices.measurement import Measurement, make_measurement

PJ_TO_MJ = 1e-9


class MacEnergyModel(PowerMeter):
    """MAC-count energy model for a device profile.

    Args:
        profile: Profile name or object with ``pj_per_mac``.
        precision: Key of ``pj_per_mac`` (``fp32``, ``fp16``, ``int8``, ...).
        include_static: Add ``static_power_w x duration`` (needs ``static_power_w``).
        clock: Monotonic seconds (the duration of windows).

    Raises:
        ProfileError: The profile lacks the precision or the static power.
    """

    kind = "mac_model"
    estimating = True

    def __init__(
        self,
        profile: str | DeviceProfile = "x86-server",
        precision: str = "fp32",
        include_static: bool = False,
        clock=None,
    ):
        super().__init__(clock)
        self.profile = resolve_profile(profile)
        if precision not in self.profile.pj_per_mac:
            hint = (
                "the detected host profile has no pJ/MAC figures; pass a shipped profile "
                "(power.device_profile: x86-server, jetson-orin-nano, ...) for the MAC model"
                if self.profile.name == "host"
                else f"it has {sorted(self.profile.pj_per_mac)}"
            )
            raise ProfileError(f"profile {self.profile.name!r} has no pj_per_mac for {precision!r}; {hint}")
        self.precision = precision
        self.pj_per_mac = self.profile.pj_per_mac[precision].value
        self.include_static = include_static
        self.static_power_mw = (
            1000.0 * self.profile.require("static_power_w", "the MAC model with include_static")
            if include_static
            else 0.0
        )
        self.source = f"mac_model:{self.profile.name}"
        self.set_idle_floor(
            self.static_power_mw, "model: static_power_w" if include_static else "model: MACs only"
        )
        self._macs_total = 0
        self._lock = threading.Lock()

    def record_macs(self, macs: int) -> None:
        """Count ``macs`` multiply-accumulates as executed now (goes to every open window)."""
        if macs < 0:
            raise ValueError(f"macs must be >= 0, got {macs}")
        with self._lock:
            self._macs_total += int(macs)

    def estimate(self, macs: int, duration_s: float = 0.0, name: str = "estimate") -> Measurement:
        """Energy of ``macs`` MACs (plus static power over ``duration_s`` when enabled)."""
        if macs < 0 or duration_s < 0:
            raise ValueError(f"macs and duration_s must be >= 0, got macs={macs}, duration_s={duration_s}")
        dynamic_mj = macs * self.pj_per_mac * PJ_TO_MJ
        static_mj = self.static_power_mw * duration_s
        return make_measurement(
            name,
            dynamic_mj + static_mj,
            duration_s,
            self.source,
            True,
            {"dynamic": dynamic_mj, "static": static_mj},
            idle_floor_mw=self.static_power_mw,
            idle_basis=self.idle_floor_basis,
        )

    def _snapshot(self) -> tuple[float, int]:
        with self._lock:
            return self._clock(), self._macs_total

    def _measure(self, name: str, start, end) -> Measurement:
        return self.estimate(end[1] - start[1], max(0.0, end[0] - start[0]), name)

    def describe(self) -> str:
        static = f" + {self.static_power_mw:g} mW x duration" if self.include_static else ""
        return "\n".join(
            [
                f"mac_model: ESTIMATE energy_mj = MACs x {self.pj_per_mac:g} pJ x 1e-9{static} "
                f"(profile {self.profile.name!r}, {self.precision})",
                f"  {self.profile.cite('pj_per_mac.' + self.precision)}",
            ]
        )
