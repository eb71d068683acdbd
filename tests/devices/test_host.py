from __future__ import annotations

import pytest

import exitflow.devices.host as host_mod
from exitflow.devices.cpu_power import (
    FALLBACK_TDP_PER_CPU_W,
    estimate_cpu_power,
    host_profile,
    match_cpu,
    normalize_cpu_name,
    profile_matches_host,
    resolve_profile,
)
from exitflow.devices.device_profiles import ProfileError, load_power_profile
from exitflow.devices.host import HostInfo, detect_host
from exitflow.devices.mac_model import MacEnergyModel
from exitflow.devices.psutil_meter import PsutilMeter
from tests.devices.fakes import make_cpuinfo

XEON = "Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz"


@pytest.fixture
def all_cpus(monkeypatch):
    """Let the process use every CPU of the fake tree (the real affinity mask is the host's)."""
    monkeypatch.setattr(host_mod.os, "sched_getaffinity", lambda pid: set(range(4096)), raising=False)


def _host(model: str, usable: float = 2.0, logical: int = 2, vm: bool = True) -> HostInfo:
    return HostInfo(model, "AuthenticAMD", 25, 1, logical, logical, 1, usable, vm, ("test",) if vm else ())


@pytest.mark.parametrize(
    ("raw", "row"),
    [
        (XEON, "Intel Xeon Platinum 8380"),
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763"),
        ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", "Intel Xeon E5-2686 v4"),
        ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "Intel Core i7-8700"),
        ("Intel(R) Core(TM) i7-8700K CPU @ 3.70GHz", None),  # a different CPU: no row, never i7-8700's
        ("AMD EPYC", None),
        ("Intel(R) Xeon(R) Processor", None),
        ("", None),
    ],
)
def test_match_cpu_whole_words_only(raw, row):
    found = match_cpu(raw)
    assert (found.name if found else None) == row


def test_normalize_strips_marks_clock_and_core_count():
    assert normalize_cpu_name(XEON) == "intel xeon platinum 8380"
    assert normalize_cpu_name("AMD EPYC 7763 64-Core Processor") == "amd epyc 7763"


def test_detect_bare_metal_two_sockets(tmp_path, all_cpus):
    proc = make_cpuinfo(tmp_path, XEON, sockets=2, cores_per_socket=3, threads_per_core=2)
    h = detect_host(proc, tmp_path / "sys")
    assert h.model_name == XEON and h.vendor == "GenuineIntel" and h.family == 6
    assert (h.logical_cpus, h.physical_cores, h.sockets) == (12, 6, 2)
    assert h.usable_cpus == 12 and h.vm is False and h.vm_evidence == ()


def test_detect_vm_from_flag_dmi_and_cgroup_quota(tmp_path, all_cpus):
    proc = make_cpuinfo(tmp_path, "AMD EPYC", cores_per_socket=4, vendor="AuthenticAMD", hypervisor=True)
    dmi = tmp_path / "sys" / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("QEMU\n")
    (dmi / "product_name").write_text("Standard PC (Q35 + ICH9, 2009)\n")
    cg = tmp_path / "sys" / "fs" / "cgroup"
    cg.mkdir(parents=True)
    (cg / "cpu.max").write_text("150000 100000\n")
    h = detect_host(proc, tmp_path / "sys")
    assert h.vm and "cpuinfo flag hypervisor" in h.vm_evidence and "dmi sys_vendor=QEMU" in h.vm_evidence
    assert h.logical_cpus == 4 and h.usable_cpus == pytest.approx(1.5)
    assert any("cgroup" in e for e in h.evidence)
    assert h.to_dict()["vm_evidence"] == list(h.vm_evidence)


def test_detect_without_proc_never_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(host_mod, "py_cpuinfo", None)
    h = detect_host(tmp_path / "none", tmp_path / "none")
    assert h.logical_cpus >= 1 and h.usable_cpus >= 1 and isinstance(h.model_name, str)


def test_py_cpuinfo_used_only_without_a_model_name(tmp_path, monkeypatch):
    class FakeCpuinfo:
        @staticmethod
        def get_cpu_info():
            return {"brand_raw": "AMD EPYC 7763 64-Core Processor"}

    monkeypatch.setattr(host_mod, "py_cpuinfo", FakeCpuinfo)
    assert detect_host(tmp_path / "none", tmp_path / "none").model_name == "AMD EPYC 7763 64-Core Processor"
    proc = make_cpuinfo(tmp_path, XEON)
    assert detect_host(proc, tmp_path / "none").model_name == XEON


def test_estimate_scales_a_table_row_by_the_vcpu_share():
    est = estimate_cpu_power(_host("AMD EPYC 7763 64-Core Processor", usable=4, logical=4))
    assert est.row is not None and est.row.name == "AMD EPYC 7763"
    assert est.tdp_per_cpu_w == pytest.approx(280 / 128)
    assert est.tdp_w == pytest.approx(4 * 280 / 128)
    assert est.idle_power_w == pytest.approx(0.1 * est.tdp_w)
    assert est.active_power_per_cpu_w == pytest.approx(0.9 * 280 / 128)
    # a fully busy share draws its TDP share
    assert est.idle_power_w + 4 * est.active_power_per_cpu_w == pytest.approx(est.tdp_w)
    d = est.to_dict()
    assert d["matched_row"]["name"] == "AMD EPYC 7763" and d["host"]["vm"] is True and d["assumptions"]


def test_unknown_or_hidden_cpu_uses_the_documented_fallback():
    est = estimate_cpu_power(_host("AMD EPYC", usable=2))
    assert est.row is None and est.tdp_per_cpu_w == FALLBACK_TDP_PER_CPU_W
    assert est.tdp_w == pytest.approx(2 * FALLBACK_TDP_PER_CPU_W)
    assert est.basis.startswith("fallback") and "hides the exact SKU" in est.assumptions[0]


def test_host_profile_has_sourced_figures():
    p = host_profile(estimate_cpu_power(_host(XEON, usable=8, logical=8, vm=False)))
    assert p.name == "host" and p.kind == "cpu" and "Platinum 8380" in p.description
    for fig in p.figures.values():
        assert fig.sources and all(s in p.sources for s in fig.sources)
    assert p.value("tdp_w") == pytest.approx(8 * 270 / 80)
    assert resolve_profile("x86-server").name == "x86-server"


def test_profile_match_warns_only_for_a_different_cpu():
    x86 = load_power_profile("x86-server")
    assert profile_matches_host(x86, _host(XEON))
    assert not profile_matches_host(x86, _host("AMD EPYC"))
    assert not profile_matches_host(x86, _host(""))


def test_psutil_host_profile_and_mismatch_note(monkeypatch):
    h = _host("AMD EPYC", usable=2)
    meter = PsutilMeter("host", host=h)
    assert meter.source == "psutil:estimate(host)" and meter.notes == ()
    assert meter.idle_power_mw == pytest.approx(800.0) and meter.active_power_per_core_mw == pytest.approx(
        3600.0
    )
    assert "AMD EPYC" in meter.describe() and "VM" in meter.describe()
    other = PsutilMeter("x86-server", host=h)
    assert (
        other.notes and "not this host's CPU" in other.notes[0] and "device_profile: host" in other.notes[0]
    )
    assert "warning: profile 'x86-server'" in other.describe()
    with other.window("w") as w:
        pass
    assert w.measurement.notes == other.notes


def test_mac_model_refuses_the_host_profile_with_a_hint():
    with pytest.raises(ProfileError, match="no pJ/MAC figures.*shipped profile"):
        MacEnergyModel("host")
