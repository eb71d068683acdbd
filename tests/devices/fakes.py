"""Fake sysfs trees and a fake clock for the devices tests."""

from __future__ import annotations

from pathlib import Path


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, t_s: float = 100.0):
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s

    def tick(self, dt_s: float) -> None:
        self.t_s += dt_s


def make_rapl_zone(root: Path, zone: str, name: str, energy_uj: int, max_range_uj: int | str | None) -> Path:
    """Create ``root/intel-rapl:<zone>`` with name, energy_uj and (unless None) max_energy_range_uj."""
    folder = root / f"intel-rapl:{zone}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "name").write_text(f"{name}\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    if max_range_uj is not None:
        (folder / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return folder


def set_counter(folder: Path, energy_uj: int) -> None:
    """Rewrite a fake counter in place (same inode, as sysfs does), without a truncated moment.

    The value is padded with spaces to a fixed width and written over the old bytes in one
    ``write`` call, so a background poller never sees an empty file.
    """
    with open(folder / "energy_uj", "r+b") as f:
        f.write(f"{energy_uj}\n".ljust(32).encode())


def make_hwmon_sensor(
    root: Path, addr: str, channels: dict[int, tuple[str, int | None, int | None, int | None]]
) -> Path:
    """New layout: ``ina3221/<addr>/hwmon/hwmon<k>`` with label, curr (mA), in (mV), power (uW) per channel."""
    folder = root / "ina3221" / addr / "hwmon" / f"hwmon{len(list(root.glob('ina3221/*')))}"
    folder.mkdir(parents=True, exist_ok=True)
    for n, (label, curr_ma, volt_mv, power_uw) in channels.items():
        (folder / f"in{n}_label").write_text(f"{label}\n")
        if curr_ma is not None:
            (folder / f"curr{n}_input").write_text(f"{curr_ma}\n")
        if volt_mv is not None:
            (folder / f"in{n}_input").write_text(f"{volt_mv}\n")
        if power_uw is not None:
            (folder / f"power{n}_input").write_text(f"{power_uw}\n")
    return folder


def make_iio_sensor(
    root: Path, addr: str, channels: dict[int, tuple[str, int | None, int | None, int | None]]
) -> Path:
    """Old layout: ``ina3221x/<addr>/iio:device0`` with rail_name, in_power (mW), in_current, in_voltage."""
    folder = root / "ina3221x" / addr / "iio:device0"
    folder.mkdir(parents=True, exist_ok=True)
    for n, (label, power_mw, curr_ma, volt_mv) in channels.items():
        (folder / f"rail_name_{n}").write_text(f"{label}\n")
        for stem, value in (("in_power", power_mw), ("in_current", curr_ma), ("in_voltage", volt_mv)):
            if value is not None:
                (folder / f"{stem}{n}_input").write_text(f"{value}\n")
    return folder


def make_cpuinfo(
    root: Path,
    model_name: str,
    sockets: int = 1,
    cores_per_socket: int = 2,
    threads_per_core: int = 1,
    vendor: str = "GenuineIntel",
    hypervisor: bool = False,
) -> Path:
    """A fake ``<root>/proc/cpuinfo`` with one block per logical CPU; returns the proc folder."""
    proc = root / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    flags = "fpu vme sse sse2 avx2" + (" hypervisor" if hypervisor else "")
    blocks, n = [], 0
    for socket in range(sockets):
        for core in range(cores_per_socket):
            for _ in range(threads_per_core):
                blocks.append(
                    f"processor\t: {n}\nvendor_id\t: {vendor}\ncpu family\t: 6\nmodel\t\t: 106\n"
                    f"model name\t: {model_name}\nphysical id\t: {socket}\ncore id\t\t: {core}\n"
                    f"flags\t\t: {flags}\n"
                )
                n += 1
    (proc / "cpuinfo").write_text("\n".join(blocks) + "\n")
    return proc
