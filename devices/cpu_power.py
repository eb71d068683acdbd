"""A host-aware CPU power estimate: this host's CPU, its rated power, and the share this process may use.

The estimate behind ``power.device_profile: host`` (the psutil meter's default), built from
:func:`devices.host.detect_host` and a small table of CPUs:

* **Table** (:data:`CPU_TABLE`): ~45 common server, desktop and laptop x86 CPUs. TDP figures are
  CodeCarbon's (``codecarbon/data/hardware/cpu_power.csv`` in codecarbon 3.3.2, the vendors' rated
  TDP); core and thread counts are the vendors' (Intel ARK, AMD product pages). A row matches when
  its name appears, as whole words, in the normalised model string (``"Intel(R) Xeon(R) Platinum
  8380 CPU @ 2.30GHz"`` -> ``"intel xeon platinum 8380"``); the longest matching row wins.
* **Fallback** for CPUs not in the table - including VMs whose hypervisor hides the SKU
  (``"AMD EPYC"``, ``"Intel Xeon Processor"``): 4 W of TDP per logical CPU, CodeCarbon's
  ``DEFAULT_POWER_PER_CORE`` (codecarbon/core/cpu.py: "4 W per thread"). Never another CPU's row.

Model (per logical CPU, i.e. per hardware thread or vCPU)::

    tdp_per_cpu_w        = row.tdp_w / row.threads        (or 4 W, the fallback)
    tdp_w                = tdp_per_cpu_w x usable_cpus    (a VM / container gets its vCPU share)
    idle_power_w         = 0.10 x tdp_w
    active_power_per_cpu = 0.90 x tdp_per_cpu_w           (per busy CPU-second)

so a fully busy share draws exactly its TDP share. The 10 % idle floor is CodeCarbon's CPU-load
model (``codecarbon/external/hardware.py``: ``power = tdp x (0.1 + 0.9 x load^3)``); the linear
load term here is above CodeCarbon's cubic one at partial load, so this errs high. Everything is
an estimate: turbo, frequency scaling, SMT sharing a core, uncore and memory are not modelled.
Replace it with a measurement (RAPL, zeus) wherever one is readable.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from exitflow.devices.device_profiles import DeviceProfile, Figure, load_power_profile
from exitflow.devices.host import HostInfo, detect_host

#: Idle floor as a fraction of TDP (CodeCarbon's CPU-load model, see the module docstring).
IDLE_FRACTION_OF_TDP = 0.10
#: TDP per logical CPU for CPUs not in the table, W (CodeCarbon's DEFAULT_POWER_PER_CORE).
FALLBACK_TDP_PER_CPU_W = 4.0


@dataclass(frozen=True)
class CpuRow:
    """One CPU model: rated TDP (W), physical cores and hardware threads per socket."""

    name: str
    tdp_w: float
    cores: int
    threads: int


# name, TDP W (CodeCarbon cpu_power.csv), cores, threads (vendor spec pages)
CPU_TABLE: tuple[CpuRow, ...] = tuple(
    CpuRow(*row)
    for row in (
        ("Intel Xeon Platinum 8380", 270, 40, 80),
        ("Intel Xeon Platinum 8375C", 300, 32, 64),
        ("Intel Xeon Platinum 8370C", 205, 32, 64),
        ("Intel Xeon Platinum 8358", 250, 32, 64),
        ("Intel Xeon Platinum 8280", 205, 28, 56),
        ("Intel Xeon Platinum 8272CL", 195, 26, 52),
        ("Intel Xeon Platinum 8259CL", 210, 24, 48),
        ("Intel Xeon Platinum 8175M", 240, 24, 48),
        ("Intel Xeon Platinum 8168", 205, 24, 48),
        ("Intel Xeon Platinum 8124M", 240, 18, 36),
        ("Intel Xeon Gold 6342", 230, 24, 48),
        ("Intel Xeon Gold 6338", 205, 32, 64),
        ("Intel Xeon Gold 6248", 150, 20, 40),
        ("Intel Xeon Gold 6230", 125, 20, 40),
        ("Intel Xeon Gold 6154", 200, 18, 36),
        ("Intel Xeon Gold 6148", 150, 20, 40),
        ("Intel Xeon Gold 6132", 140, 14, 28),
        ("Intel Xeon Silver 4210", 85, 10, 20),
        ("Intel Xeon E5-2699 v4", 145, 22, 44),
        ("Intel Xeon E5-2690 v4", 135, 14, 28),
        ("Intel Xeon E5-2686 v4", 145, 18, 36),
        ("Intel Xeon E5-2680 v4", 120, 14, 28),
        ("Intel Xeon E5-2673 v4", 135, 20, 40),
        ("Intel Xeon E5-2670 v3", 120, 12, 24),
        ("AMD EPYC 9754", 360, 128, 256),
        ("AMD EPYC 9654", 360, 96, 192),
        ("AMD EPYC 9554", 360, 64, 128),
        ("AMD EPYC 7763", 280, 64, 128),
        ("AMD EPYC 7742", 225, 64, 128),
        ("AMD EPYC 7713", 225, 64, 128),
        ("AMD EPYC 7702", 200, 64, 128),
        ("AMD EPYC 7543", 225, 32, 64),
        ("AMD EPYC 7502", 180, 32, 64),
        ("AMD EPYC 7R13", 225, 48, 96),
        ("AMD EPYC 7443", 200, 24, 48),
        ("AMD EPYC 7402", 180, 24, 48),
        ("AMD EPYC 7313", 155, 16, 32),
        ("AMD EPYC 7302", 155, 16, 32),
        ("Intel Core i9-13900K", 125, 24, 32),
        ("Intel Core i7-10700", 65, 8, 16),
        ("Intel Core i7-9750H", 45, 6, 12),
        ("Intel Core i7-8700", 65, 6, 12),
        ("Intel Core i7-1185G7", 28, 4, 8),
        ("Intel Core i7-1165G7", 28, 4, 8),
        ("Intel Core i5-1135G7", 28, 4, 8),
        ("Intel Core i5-8250U", 15, 4, 8),
        ("AMD Ryzen 9 7950X", 170, 16, 32),
        ("AMD Ryzen 9 5950X", 105, 16, 32),
        ("AMD Ryzen 7 5800X", 105, 8, 16),
        ("AMD Ryzen 7 5800H", 45, 8, 16),
        ("AMD Ryzen 7 3700X", 65, 8, 16),
        ("AMD Ryzen 5 5600X", 65, 6, 12),
    )
)

_SOURCES = {
    "codecarbon-tdp": {
        "id": "codecarbon-tdp",
        "title": "CodeCarbon 3.3.2, codecarbon/data/hardware/cpu_power.csv (TDP per CPU model, W)",
        "url": "https://github.com/mlco2/codecarbon/blob/master/codecarbon/data/hardware/cpu_power.csv",
    },
    "codecarbon-default": {
        "id": "codecarbon-default",
        "title": "CodeCarbon 3.3.2, codecarbon/core/cpu.py: DEFAULT_POWER_PER_CORE = 4 W per thread for unknown CPUs",
        "url": "https://github.com/mlco2/codecarbon/blob/master/codecarbon/core/cpu.py",
    },
    "codecarbon-load": {
        "id": "codecarbon-load",
        "title": "CodeCarbon 3.3.2, codecarbon/external/hardware.py: CPU-load mode, power = TDP x (0.1 + 0.9 x load^3)",
        "url": "https://github.com/mlco2/codecarbon/blob/master/codecarbon/external/hardware.py",
    },
    "vendor-specs": {
        "id": "vendor-specs",
        "title": "Intel ARK / AMD product specification pages (cores and threads per socket)",
        "url": "https://ark.intel.com/ and https://www.amd.com/en/products/specifications/processors",
    },
    "host": {
        "id": "host",
        "title": "detected on this host (/proc/cpuinfo, sched_getaffinity, cgroup cpu.max)",
    },
}


def normalize_cpu_name(text: str) -> str:
    """Lower-case model string without trademarks, ``CPU``/``Processor``, core counts and clocks."""
    s = text.lower()
    s = re.sub(r"\((r|tm|c)\)|®|™", " ", s)
    s = re.sub(r"@\s*[\d.]+\s*ghz", " ", s)
    s = re.sub(r"\b\d+-core\b|\bcpu\b|\bprocessor\b|\bwith radeon graphics\b", " ", s)
    return " ".join(s.split())


def match_cpu(model_name: str, table: tuple[CpuRow, ...] = CPU_TABLE) -> CpuRow | None:
    """The table row whose name appears as whole words in ``model_name`` (longest wins), or ``None``."""
    norm = f" {normalize_cpu_name(model_name)} "
    best: CpuRow | None = None
    for row in table:
        key = normalize_cpu_name(row.name)
        if f" {key} " in norm and (best is None or len(key) > len(normalize_cpu_name(best.name))):
            best = row
    return best


@dataclass(frozen=True)
class CpuPowerEstimate:
    """The host-aware CPU power figures and everything they assumed (see the module docstring)."""

    host: HostInfo
    row: CpuRow | None
    tdp_per_cpu_w: float
    tdp_w: float
    idle_power_w: float
    active_power_per_cpu_w: float
    assumptions: tuple[str, ...]

    @property
    def basis(self) -> str:
        """``table row '<name>'`` or ``fallback: ...``, one line."""
        if self.row is not None:
            r = self.row
            return f"table row {r.name!r} (TDP {r.tdp_w:g} W, {r.cores} cores / {r.threads} threads)"
        return f"fallback: {FALLBACK_TDP_PER_CPU_W:g} W TDP per logical CPU (CPU model not in the table)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host.to_dict(),
            "matched_row": asdict(self.row) if self.row is not None else None,
            "basis": self.basis,
            "tdp_per_cpu_w": self.tdp_per_cpu_w,
            "tdp_w": self.tdp_w,
            "idle_power_w": self.idle_power_w,
            "active_power_per_cpu_w": self.active_power_per_cpu_w,
            "assumptions": list(self.assumptions),
        }


def estimate_cpu_power(host: HostInfo | None = None) -> CpuPowerEstimate:
    """Host-aware CPU power figures for ``host`` (default: :func:`detect_host`)."""
    host = host or detect_host()
    row = match_cpu(host.model_name)
    assumptions = []
    if row is not None:
        per_cpu = row.tdp_w / row.threads
        assumptions.append(f"TDP per logical CPU = {row.tdp_w:g} W / {row.threads} threads = {per_cpu:.3g} W")
    else:
        per_cpu = FALLBACK_TDP_PER_CPU_W
        why = "not in the table"
        if normalize_cpu_name(host.model_name) in ("amd epyc", "intel xeon", "common kvm", "qemu virtual"):
            why = "a generic name: the hypervisor hides the exact SKU"
        assumptions.append(
            f"CPU model {host.model_name or 'unknown'!r} is {why}; TDP per logical CPU = "
            f"{FALLBACK_TDP_PER_CPU_W:g} W (CodeCarbon's default per thread), no other CPU's figures"
        )
    share = "vCPUs of a VM" if host.vm else "logical CPUs"
    assumptions.append(
        f"this process may use {host.usable_cpus:g} of {host.logical_cpus} {share}; TDP share = "
        f"{per_cpu:.3g} W x {host.usable_cpus:g}"
    )
    tdp_w = per_cpu * host.usable_cpus
    assumptions.append(f"idle floor = {IDLE_FRACTION_OF_TDP:g} x TDP share (CodeCarbon CPU-load model)")
    assumptions.append(
        f"each busy CPU-second adds {1 - IDLE_FRACTION_OF_TDP:g} x TDP per CPU (linear in load; "
        "turbo, DVFS, SMT, uncore and DRAM not modelled)"
    )
    return CpuPowerEstimate(
        host=host,
        row=row,
        tdp_per_cpu_w=per_cpu,
        tdp_w=tdp_w,
        idle_power_w=IDLE_FRACTION_OF_TDP * tdp_w,
        active_power_per_cpu_w=(1 - IDLE_FRACTION_OF_TDP) * per_cpu,
        assumptions=tuple(assumptions),
    )


def host_profile(estimate: CpuPowerEstimate | None = None) -> DeviceProfile:
    """A :class:`DeviceProfile` named ``host`` with the estimate's figures and their sources."""
    est = estimate or estimate_cpu_power()
    h = est.host
    tdp_src = (
        ("codecarbon-tdp", "vendor-specs", "host") if est.row is not None else ("codecarbon-default", "host")
    )
    vm = ", VM" if h.vm else ""
    figures = {
        "cores": Figure(h.usable_cpus, ("host",), False, "logical CPUs this process may use"),
        "tdp_w": Figure(est.tdp_w, tdp_src, True, f"{est.basis}; share of {h.usable_cpus:g} logical CPUs"),
        "idle_power_w": Figure(
            est.idle_power_w, (*tdp_src, "codecarbon-load"), True, f"{IDLE_FRACTION_OF_TDP:g} x tdp_w"
        ),
        "active_power_per_core_w": Figure(
            est.active_power_per_cpu_w,
            (*tdp_src, "codecarbon-load"),
            True,
            f"{1 - IDLE_FRACTION_OF_TDP:g} x TDP per logical CPU, per busy CPU-second",
        ),
    }
    used = {s for f in figures.values() for s in f.sources}
    return DeviceProfile(
        name="host",
        description=f"this host: {h.model_name or 'unknown CPU'} ({h.usable_cpus:g} of {h.logical_cpus} CPUs{vm}); {est.basis}",
        kind="cpu",
        figures=figures,
        pj_per_mac={},
        sources={k: v for k, v in _SOURCES.items() if k in used},
        path="detected (devices/cpu_power.py)",
    )


def profile_matches_host(profile: DeviceProfile, host: HostInfo) -> bool:
    """Whether a shipped profile plausibly describes ``host``'s CPU (used to warn, never to switch)."""
    if profile.name == "host":
        return True
    text = normalize_cpu_name(f"{profile.description} {profile.name.replace('-', ' ')}")
    row = match_cpu(host.model_name)
    if row is not None:
        return f" {normalize_cpu_name(row.name)} " in f" {text} "
    host_norm = normalize_cpu_name(host.model_name)
    name_norm = normalize_cpu_name(profile.name.replace("-", " "))
    return bool(host_norm) and (host_norm in text or name_norm in host_norm)


def resolve_profile(profile: str | DeviceProfile, host: HostInfo | None = None) -> DeviceProfile:
    """``"host"`` -> :func:`host_profile` (of ``host``, default detected); a name or path ->
    :func:`~devices.device_profiles.load_power_profile`; a profile object as it is."""
    if isinstance(profile, DeviceProfile):
        return profile
    if profile == "host":
        return host_profile(estimate_cpu_power(host))
    return load_power_profile(profile)


def describe_host(host: HostInfo | None = None) -> dict[str, Any]:
    """JSON-ready: the host as detected, the matched row or fallback, figures and assumptions."""
    return estimate_cpu_power(host).to_dict()


__all__ = [
    "CPU_TABLE",
    "CpuPowerEstimate",
    "CpuRow",
    "FALLBACK_TDP_PER_CPU_W",
    "IDLE_FRACTION_OF_TDP",
    "describe_host",
    "estimate_cpu_power",
    "host_profile",
    "match_cpu",
    "normalize_cpu_name",
    "profile_matches_host",
    "resolve_profile",
]
