"""Cost of one ``begin_window`` + ``end_window`` pair on the CPU-side meters, in microseconds.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/meter_window.py [--iterations 20000] [--repeats 5] [--json]

RAPL runs on a fake powercap tree in a temporary folder (package-0 with core and dram subzones),
with its background poller on, once without and once with an idle floor (the idle / dynamic
split adds one Measurement construction per window); the psutil meter uses the host-aware
profile (``host``); the other meters need no hardware. The last row, psutil with a
``TraceRecorder`` attached (every edge also cuts the trace and writes a CSV row), is reported
for information and not held to the budget. Each meter is timed in
``repeats`` batches of ``iterations`` pairs. Printed per pair: the median batch in wall-clock
time, the best batch in wall-clock time, and the median batch in CPU time of the calling thread
(``time.thread_time_ns``). On a shared, overloaded machine the wall-clock figures include time the
thread spent descheduled; the CPU-time figure is the cost a window pair itself adds, and it is
what the budget check uses.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exitflow.devices.mac_model import MacEnergyModel  # noqa: E402
from exitflow.devices.null import NullMeter  # noqa: E402
from exitflow.devices.psutil_meter import PsutilMeter  # noqa: E402
from exitflow.devices.rapl import RaplMeter  # noqa: E402
from exitflow.devices.replay import PowerTrace, ReplayMeter  # noqa: E402
from exitflow.devices.trace import TraceRecorder  # noqa: E402

BUDGET_US = 50.0
TRACED = "psutil + trace recorder (info)"


def _fake_rapl_tree(root: Path) -> None:
    for zone, name, value in (("0", "package-0", 123_456), ("0:0", "core", 55_555), ("0:1", "dram", 7_777)):
        folder = root / f"intel-rapl:{zone}"
        folder.mkdir(parents=True)
        (folder / "name").write_text(f"{name}\n")
        (folder / "energy_uj").write_text(f"{value}\n")
        (folder / "max_energy_range_uj").write_text("262143328850\n")


def time_pairs_us(meter, iterations: int, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and thread-CPU microseconds per begin/end pair, one value per batch."""
    wall_us, cpu_us = [], []
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(iterations):
            meter.begin_window("w")
            meter.end_window("w")
        cpu1, wall1 = time.thread_time_ns(), time.perf_counter_ns()
        wall_us.append((wall1 - wall0) / iterations / 1000.0)
        cpu_us.append((cpu1 - cpu0) / iterations / 1000.0)
    return wall_us, cpu_us


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        _fake_rapl_tree(Path(tmp))
        floored = RaplMeter(tmp)
        floored.set_idle_floor(1000.0, "benchmark")
        traced = PsutilMeter("host", scope="process")
        recorder = TraceRecorder(traced, Path(tmp) / "trace.csv", sample_hz=10.0)
        meters = {
            "psutil (process)": PsutilMeter("host", scope="process"),
            "psutil (system)": PsutilMeter("host", scope="system"),
            "rapl (fake tree, 3 zones)": RaplMeter(tmp),
            "rapl (+ idle floor split)": floored,
            "replay": ReplayMeter(PowerTrace([0.0, 1.0, 2.0], [1000.0, 3000.0, 2000.0])),
            "mac_model": MacEnergyModel("x86-server"),
            "null": NullMeter(),
            TRACED: traced,
        }
        rows: list[dict[str, Any]] = []
        for name, meter in meters.items():
            if name == TRACED:
                recorder.start()
            wall_us, cpu_us = time_pairs_us(meter, args.iterations, args.repeats)
            if name == TRACED:
                recorder.stop()
            meter.close()
            rows.append(
                {
                    "meter": name,
                    "wall_median_us": statistics.median(wall_us),
                    "wall_best_us": min(wall_us),
                    "cpu_median_us": statistics.median(cpu_us),
                    "budgeted": name != TRACED,
                }
            )
    if args.json:
        print(
            json.dumps(
                {"python": platform.python_version(), "iterations": args.iterations, "rows": rows}, indent=2
            )
        )
    else:
        print(f"python {platform.python_version()}, {args.iterations} pairs x {args.repeats} repeats")
        print(f"us per begin/end pair; budget {BUDGET_US:g} us checked on the CPU-time median")
        print(f"{'meter':<28} {'wall median':>12} {'wall best':>10} {'cpu median':>11}")
        for r in rows:
            ok = ("ok" if r["cpu_median_us"] <= BUDGET_US else "OVER") if r["budgeted"] else "(not budgeted)"
            print(
                f"{r['meter']:<28} {r['wall_median_us']:>12.2f} {r['wall_best_us']:>10.2f} "
                f"{r['cpu_median_us']:>11.2f}  {ok}"
            )
    return 0 if all(r["cpu_median_us"] <= BUDGET_US for r in rows if r["budgeted"]) else 1


if __name__ == "__main__":
    sys.exit(main())
