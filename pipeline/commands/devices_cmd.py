"""``exitflow devices [--json]``: which power meters work here, which one ``auto`` picks, and why."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from exitflow.devices import DeviceError
from exitflow.devices.registry import devices_report
from exitflow.devices.trace import record_trace
from exitflow.pipeline.config import Config, config_from_dict, load_config, output_path, parse_overrides
from exitflow.pipeline.errors import ConfigError, ExitflowError
from exitflow.pipeline.meters import meter_options, open_meter


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("devices", help="list the power meters available on this machine")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--trace", type=float, default=None, metavar="SECONDS",
                        help="record a power trace (per rail) of the selected meter for this long")
    parser.add_argument("--trace-out", default="runs/power-trace.csv", help="CSV for --trace (default: %(default)s)")
    parser.add_argument("--trace-hz", type=float, default=10.0, help="sampling rate of --trace (default: %(default)s)")
    parser.set_defaults(func=_devices, needs_config=False)


def _config(args: argparse.Namespace) -> Config:
    """The config file when it exists, else the defaults; ``--set`` overrides apply to both."""
    if Path(args.config).exists():
        return load_config(args.config, args.overrides)
    extra, errors = parse_overrides(args.overrides)
    if errors:
        raise ConfigError(errors, source="--set")
    return config_from_dict(extra, source="defaults")


def _devices(args: argparse.Namespace, cfg: Config | None) -> int:
    cfg = cfg or _config(args)
    if args.trace is not None and not (math.isfinite(args.trace) and args.trace > 0):
        raise ExitflowError(f"--trace needs a positive number of seconds, got {args.trace}")
    if not (math.isfinite(args.trace_hz) and 0 < args.trace_hz <= 1000):
        raise ExitflowError(f"--trace-hz must be in (0, 1000], got {args.trace_hz}")
    opts = meter_options(cfg, calibrate=False)  # listing meters must stay fast
    try:
        report = devices_report(cfg.power.meter, opts)
    except (DeviceError, ValueError) as e:
        raise ExitflowError(str(e)) from e
    if args.trace is not None:
        report["trace"] = _trace(cfg, args)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0 if report["selected_available"] else 1
    print(format_report(report))
    return 0 if report["selected_available"] else 1


def _trace(cfg: Config, args: argparse.Namespace) -> dict:
    out = output_path(cfg, args.trace_out)
    with open_meter(cfg) as meter:
        try:
            summary = record_trace(meter, out, args.trace, args.trace_hz)
        except (DeviceError, ValueError, OSError) as e:
            raise ExitflowError(f"power trace to {out}: {e}") from e
    return summary.to_dict()


def format_report(report: dict) -> str:
    """The text ``exitflow devices`` prints: every meter, the choice, the host as detected and assumed."""
    lines = []
    for r in report["meters"]:
        mark = "yes" if r["available"] else "no "
        kind = " (estimate)" if r["available"] and r["estimated"] else ""
        lines.append(f"  {mark} {r['name']:<9} {r['detail']}{kind}")
    lines.append(f"\npower.meter = {report['configured']!r} -> {report['selected']}")
    if report["selected_description"] is None:
        lines.append(f"  {report['selected']} is not available here; see its line above for how to fix it")
    else:
        lines.append(report["selected_description"])
    host = report.get("host") or {}
    if host:
        lines.append(f"\nhost: {host.get('basis', host)}")
        for item in host.get("assumptions", []):
            lines.append(f"  assumed: {item}")
    if "trace" in report:
        t = report["trace"]
        lines.append(f"\npower trace: {t['rows']} rows over {t['duration_s']:.1f} s, {t['energy_mj']:.1f} mJ -> {t['path']}")
    return "\n".join(lines)
