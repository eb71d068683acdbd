"""NVIDIA GPUs through NVML (``nvidia-ml-py``, imported here as ``pynvml``).

Two methods, reported in ``Measurement.source``:

* ``nvml:energy_counter`` - the difference of ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since
  the driver loaded; Volta and newer) between the window edges.
* ``nvml:power_sampling`` - the trapezoidal integral of ``nvmlDeviceGetPowerUsage`` (mW) sampled
  by a background thread at ``sample_hz`` plus one sample at each window edge. Used when the
  counter is unsupported, and for any window whose counter delta is 0 (the counter updates
  only every few tens of milliseconds, so very short windows can see no change).

At both window edges the meter calls ``torch.cuda.synchronize()`` if torch is already imported
and CUDA is initialised, so queued kernels are charged to the window that launched them. torch
is never imported by this module. Tests mock ``devices.nvml.pynvml``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

from exitflow.devices.base import PowerMeter
from exitflow.devices.errors import DeviceError
from exitflow.devices.measurement import Measurement, make_measurement
from exitflow.devices.sampler import PeriodicThread, PowerIntegrator

try:
    import pynvml
except ImportError:  # nvidia-ml-py is an optional dependency
    pynvml = None

_FIX = (
    "install the NVIDIA driver and `pip install nvidia-ml-py`, check that `nvidia-smi` works, "
    "or choose another meter with power.meter: rapl | jetson | psutil"
)


def sync_cuda() -> None:
    """Wait for queued CUDA work when torch is already loaded and CUDA initialised; else no-op."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is not None and cuda.is_available() and cuda.is_initialized():
        cuda.synchronize()


class NvmlMeter(PowerMeter):
    """GPU energy from NVML, with a sampled-power fallback.

    Args:
        device_indices: GPUs to measure (NVML indices); ``None`` = all. The window total is their
            sum; ``rails`` holds ``gpu<i>`` per GPU.
        sample_hz: Rate of the background power sampler.
        start_sampler: Start the sampler thread; tests pass ``False`` and call :meth:`sample`.
        synchronize_cuda: Call :func:`sync_cuda` at window edges.
        clock: Monotonic seconds.

    Raises:
        DeviceError: NVML missing, failing, or no GPU (with a fix).
    """

    kind = "nvml"

    def __init__(
        self,
        device_indices: Sequence[int] | None = None,
        sample_hz: float = 50.0,
        start_sampler: bool = True,
        synchronize_cuda: bool = True,
        clock=None,
    ):
        if pynvml is None:
            raise DeviceError(f"nvidia-ml-py (pynvml) is not installed; {_FIX}")
        if not sample_hz > 0:
            raise ValueError(f"sample_hz must be > 0, got {sample_hz}")
        super().__init__(clock)
        self.sample_hz = float(sample_hz)
        self.synchronize_cuda = synchronize_cuda
        self._lock = threading.Lock()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise DeviceError(f"NVML failed to initialise ({e}); {_FIX}") from e
        self._initialised = True
        try:
            count = pynvml.nvmlDeviceGetCount()
            indices = list(range(count)) if device_indices is None else list(device_indices)
            if not indices:
                raise DeviceError(f"NVML found no GPU; {_FIX}")
            bad = [i for i in indices if not 0 <= i < count]
            if bad:
                raise DeviceError(
                    f"GPU indices {bad} do not exist (NVML sees {count}); pick indices 0..{count - 1}"
                )
            self.indices = indices
            self.rail_names = [f"gpu{i}" for i in indices]
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self.names = [_decode(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
        except pynvml.NVMLError as e:
            self._shutdown()
            raise DeviceError(f"NVML could not open the GPUs ({e}); {_FIX}") from e
        except DeviceError:
            self._shutdown()
            raise
        self.counter_supported, self.counter_problem = self._probe_counter()
        self._integrator = PowerIntegrator(self.rail_names)
        self.sample()
        self._sampler: PeriodicThread | None = None
        if start_sampler:
            self._sampler = PeriodicThread(self.sample, 1.0 / sample_hz, name="exitflow-nvml-sampler")
            self._sampler.start()

    def _probe_counter(self) -> tuple[bool, str]:
        try:
            for handle in self._handles:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except pynvml.NVMLError as e:
            return False, f"total energy counter unavailable ({e}; needs Volta or newer)"
        return True, ""

    def _read_counters_mj(self) -> list[int]:
        try:
            return [int(pynvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles]
        except pynvml.NVMLError as e:
            raise DeviceError(f"reading the NVML energy counter failed ({e}); {_FIX}") from e

    def read_power_mw(self) -> dict[str, float]:
        """Current power draw of every measured GPU in mW."""
        try:
            return {
                r: float(pynvml.nvmlDeviceGetPowerUsage(h))
                for r, h in zip(self.rail_names, self._handles, strict=True)
            }
        except pynvml.NVMLError as e:
            raise DeviceError(f"nvmlDeviceGetPowerUsage failed ({e}); {_FIX}") from e

    def sample(self) -> None:
        """Take one power sample of every GPU and add it to the integral."""
        with self._lock:
            self._integrator.add(self._clock(), self.read_power_mw())

    def _snapshot(self):
        if self._sampler is not None and self._sampler.error is not None:
            raise DeviceError(f"the NVML sampler stopped: {self._sampler.error}") from self._sampler.error
        if self.synchronize_cuda:
            sync_cuda()
        with self._lock:
            counters = self._read_counters_mj() if self.counter_supported else None
            t_s = self._clock()
            self._integrator.add(t_s, self.read_power_mw())
            return t_s, counters, self._integrator.energy_mj()

    def _measure(self, name: str, start, end) -> Measurement:
        t0, c0, s0 = start
        t1, c1, s1 = end
        notes: tuple[str, ...] = ()
        if c0 is not None and c1 is not None:
            deltas = [b - a for a, b in zip(c0, c1, strict=True)]
            if sum(deltas) > 0 and min(deltas) >= 0:
                rails = {r: float(d) for r, d in zip(self.rail_names, deltas, strict=True)}
                return make_measurement(
                    name, sum(rails.values()), t1 - t0, "nvml:energy_counter", False, rails
                )
            notes = ("energy counter did not advance during the window; used sampled power instead",)
        rails = {r: s1[r] - s0[r] for r in self.rail_names}
        return make_measurement(
            name, sum(rails.values()), t1 - t0, "nvml:power_sampling", False, rails, notes=notes
        )

    def describe(self) -> str:
        gpus = ", ".join(f"gpu{i} ({n})" for i, n in zip(self.indices, self.names, strict=True))
        method = (
            "total energy counter (nvmlDeviceGetTotalEnergyConsumption), power sampling for windows "
            "where it does not advance"
            if self.counter_supported
            else f"power sampling only: {self.counter_problem}"
        )
        return "\n".join(
            [
                f"nvml: {gpus}",
                f"  method: {method}; sampler at {self.sample_hz:g} Hz, trapezoidal integral",
                "  CUDA is synchronised at window edges when torch has initialised it",
            ]
        )

    def _shutdown(self) -> None:
        if getattr(self, "_initialised", False):
            self._initialised = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass  # shutting down a half-initialised library is best effort

    def close(self) -> None:
        sampler = getattr(self, "_sampler", None)
        if sampler is not None:
            sampler.stop()
        self._shutdown()
        super().close()


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
