"""Cost of one ``begin_window`` + ``end_window`` pair on the CPU-side meters, in microseconds.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/meter_window.py [--iterations 20000] [--repeats 5] [--json]

RAPL runs on a fake powercap tree in a temporary folder (package-0 with core and dram subzones),
with its background poller on; the other meters need no hardware. Each meter is timed
``repeats`` times over ``iterations`` pairs; the median and the best repeat are printed.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devices.mac_model import MacEnergyModel  # noqa: E402
from devices.null import NullMeter  # noqa: E402
from devices.psutil_meter import PsutilMeter  # noqa: E402
from devices.rapl import RaplMeter  # noqa: E402
from devices.replay import PowerTrace, ReplayMeter  # noqa: E402

BUDGET_US = 50.0


def _fake_rapl_tree(root: Path) -> None:
    for zone, name, value in (("0", "package-0", 123_456), ("0:0", "core", 55_555), ("0:1", "dram", 7_777)):
        folder = root / f"intel-rapl:{zone}"
        folder.mkdir(parents=True)
        (folder / "name").write_text(f"{name}\n")
        (folder / "energy_uj").write_text(f"{value}\n")
        (folder / "max_energy_range_uj").write_text("262143328850\n")


def time_pairs_us(meter, iterations: int, repeats: int) -> list[float]:
    """Microseconds per begin/end pair for each repeat."""
    results = []
    for _ in range(repeats):
        start_ns = time.perf_counter_ns()
        for _ in range(iterations):
            meter.begin_window("w")
            meter.end_window("w")
        results.append((time.perf_counter_ns() - start_ns) / iterations / 1000.0)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        _fake_rapl_tree(Path(tmp))
        meters = {
            "psutil (process)": PsutilMeter("x86-server", scope="process"),
            "psutil (system)": PsutilMeter("x86-server", scope="system"),
            "rapl (fake tree, 3 zones)": RaplMeter(tmp),
            "replay": ReplayMeter(PowerTrace([0.0, 1.0, 2.0], [1000.0, 3000.0, 2000.0])),
            "mac_model": MacEnergyModel("x86-server"),
            "null": NullMeter(),
        }
        rows = []
        for name, meter in meters.items():
            per_pair = time_pairs_us(meter, args.iterations, args.repeats)
            meter.close()
            rows.append({"meter": name, "median_us": statistics.median(per_pair), "best_us": min(per_pair)})
    if args.json:
        print(
            json.dumps(
                {"python": platform.python_version(), "iterations": args.iterations, "rows": rows}, indent=2
            )
        )
    else:
        print(f"python {platform.python_version()}, {args.iterations} pairs x {args.repeats} repeats")
        print(f"{'meter':<28} {'median us/pair':>15} {'best us/pair':>13}  budget {BUDGET_US:g} us")
        for r in rows:
            ok = "ok" if r["median_us"] <= BUDGET_US else "OVER"
            print(f"{r['meter']:<28} {r['median_us']:>15.2f} {r['best_us']:>13.2f}  {ok}")
    return 0 if all(r["median_us"] <= BUDGET_US for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
