"""What CPU this process runs on: model as detected, CPUs it may use, and whether it is a VM.

``detect_host()`` reads, in this order of trust:

* ``/proc/cpuinfo`` - ``model name`` (x86) or ``Hardware`` / ``Model`` (Arm boards), ``vendor_id``,
  ``cpu family`` / ``model``, ``physical id``, ``core id``, and the ``hypervisor`` flag that x86
  guests see (CPUID leaf 1, ECX bit 31);
* ``/sys/class/dmi/id/{sys_vendor,product_name}`` - names such as ``QEMU``, ``KVM``, ``VMware``,
  ``Amazon EC2``, ``Google Compute Engine``, ``Microsoft Corporation`` / ``Virtual Machine``;
  ``/sys/hypervisor/type`` (Xen);
* the CPUs this process may use: ``os.sched_getaffinity`` and a cgroup v2 quota
  (``/sys/fs/cgroup/cpu.max``, ``"<quota> <period>"``) - a container limited to 2 CPUs on a
  64-core host uses 2;
* ``py-cpuinfo`` (``cpuinfo.get_cpu_info()["brand_raw"]``) only when it is installed and
  ``/proc/cpuinfo`` named no model (non-Linux hosts); ``platform.processor()`` last.

Nothing here guesses: a field that cannot be read is ``None`` and ``evidence`` says what was read.
Tests point ``proc_root`` / ``sys_root`` at fake trees under ``tmp_path``.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:  # optional: only used when /proc/cpuinfo names no model
    import cpuinfo as py_cpuinfo
except ImportError:
    py_cpuinfo = None

#: Substrings of DMI vendor / product names that mean "virtual machine" (lower case).
VM_DMI_MARKERS = (
    "qemu", "kvm", "vmware", "virtualbox", "innotek", "xen", "bochs", "parallels",
    "amazon ec2", "google compute engine", "microsoft corporation", "virtual machine", "openstack",
    "cloud hypervisor", "firecracker",
)  # fmt: skip


@dataclass(frozen=True)
class HostInfo:
    """The CPU side of this machine as detected (see the module docstring for the sources).

    Attributes:
        model_name: CPU model string as the OS reports it (``"AMD EPYC 7763 64-Core Processor"``),
            ``""`` when none was found.
        vendor: ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``) or ``""``.
        family: ``cpu family`` number, or ``None``.
        model: ``model`` number, or ``None``.
        logical_cpus: Logical CPUs (hardware threads / vCPUs) the OS shows.
        physical_cores: Distinct (physical id, core id) pairs, or ``None`` when not reported.
        sockets: Distinct physical ids, or ``None``.
        usable_cpus: CPUs this process may use: affinity mask, lowered by a cgroup quota
            (may be fractional with a quota, e.g. 1.5).
        vm: ``True`` when running as a virtual machine guest.
        vm_evidence: What said so (``"cpuinfo flag hypervisor"``, ``"dmi sys_vendor=QEMU"``).
        evidence: Which files or calls each field came from.
    """

    model_name: str
    vendor: str
    family: int | None
    model: int | None
    logical_cpus: int
    physical_cores: int | None
    sockets: int | None
    usable_cpus: float
    vm: bool
    vm_evidence: tuple[str, ...] = ()
    evidence: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vm_evidence"] = list(self.vm_evidence)
        d["evidence"] = list(self.evidence)
        return d


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


@dataclass
class CpuinfoFields:
    """What :func:`parse_cpuinfo` extracts: first-seen values per key, and counts."""

    first: dict[str, str] = field(default_factory=dict)
    processors: int = 0
    cores: set[tuple[str, str]] = field(default_factory=set)
    sockets: set[str] = field(default_factory=set)
    flags: set[str] = field(default_factory=set)


def parse_cpuinfo(text: str) -> CpuinfoFields:
    """The fields of ``/proc/cpuinfo`` this module needs: first-seen values plus counts."""
    out = CpuinfoFields()
    physical_id = "0"
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            out.processors += 1
        elif key == "physical id":
            physical_id = value
            out.sockets.add(value)
        elif key == "core id":
            out.cores.add((physical_id, value))
        elif key in ("flags", "features"):
            out.flags.update(value.split())
        out.first.setdefault(key, value)
    return out


def _cgroup_quota_cpus(sys_root: Path) -> float | None:
    text = _read(sys_root / "fs" / "cgroup" / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        cpus = int(quota) / int(period or "100000")
    except (ValueError, ZeroDivisionError):
        return None
    return cpus if cpus > 0 and math.isfinite(cpus) else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def detect_host(proc_root: str | Path = "/proc", sys_root: str | Path = "/sys") -> HostInfo:
    """Detect this machine's CPU (see the module docstring; never raises on missing files)."""
    proc, sys_ = Path(proc_root), Path(sys_root)
    evidence: list[str] = []
    vm_evidence: list[str] = []
    text = _read(proc / "cpuinfo")
    info = parse_cpuinfo(text or "")
    first = info.first
    model_name = first.get("model name") or first.get("hardware") or first.get("model") or ""
    if model_name and not first.get("model name") and model_name.isdigit():
        model_name = ""  # Arm's "model" can be a bare number; not a name
    if model_name:
        evidence.append("model_name: /proc/cpuinfo")
    elif py_cpuinfo is not None:
        model_name = str(py_cpuinfo.get_cpu_info().get("brand_raw", "") or "")
        evidence.append("model_name: py-cpuinfo brand_raw")
    if not model_name:
        model_name = platform.processor() or ""
        evidence.append("model_name: platform.processor()" if model_name else "model_name: not found")
    if "hypervisor" in info.flags:
        vm_evidence.append("cpuinfo flag hypervisor")
    for attr in ("sys_vendor", "product_name"):
        value = _read(sys_ / "class" / "dmi" / "id" / attr)
        if value and any(m in value.lower() for m in VM_DMI_MARKERS):
            vm_evidence.append(f"dmi {attr}={value}")
    hv_type = _read(sys_ / "hypervisor" / "type")
    if hv_type:
        vm_evidence.append(f"/sys/hypervisor/type={hv_type}")
    logical = info.processors or os.cpu_count() or 1
    evidence.append(
        "logical_cpus: /proc/cpuinfo processor lines" if info.processors else "logical_cpus: os.cpu_count()"
    )
    try:
        usable: float = float(len(os.sched_getaffinity(0)))
        evidence.append("usable_cpus: sched_getaffinity")
    except (AttributeError, OSError):
        usable = float(logical)
    quota = _cgroup_quota_cpus(sys_)
    if quota is not None and quota < usable:
        usable = quota
        evidence.append("usable_cpus: cgroup cpu.max quota")
    usable = min(usable, float(logical))
    return HostInfo(
        model_name=" ".join(model_name.split()),
        vendor=first.get("vendor_id", ""),
        family=_int_or_none(first.get("cpu family")),
        model=_int_or_none(first.get("model")) if first.get("model name") else None,
        logical_cpus=int(logical),
        physical_cores=len(info.cores) or None,
        sockets=len(info.sockets) or None,
        usable_cpus=usable,
        vm=bool(vm_evidence),
        vm_evidence=tuple(vm_evidence),
        evidence=tuple(evidence),
    )


__all__ = ["HostInfo", "detect_host", "parse_cpuinfo"]
