"""``exitflow devices [--json]``: which power meters work here, which one ``auto`` picks, and why."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exitflow.devices import DeviceError, probe_meters
from exitflow.devices.registry import describe_meter
from exitflow.pipeline.config import Config, config_from_dict, load_config, parse_overrides
from exitflow.pipeline.errors import ConfigError, ExitflowError
from exitflow.pipeline.meters import meter_options


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("devices", help="list the power meters available on this machine")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
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
    power = cfg.power
    opts = meter_options(cfg)
    try:
        auto_choice, results = probe_meters(opts)
        selected = auto_choice if power.meter == "auto" else power.meter
        selected_ok = any(r.name == selected and r.available for r in results)
        description = describe_meter(selected, opts) if selected_ok else None
    except DeviceError as e:
        raise ExitflowError(str(e)) from e
    if args.json:
        json.dump(
            {
                "configured": power.meter,
                "auto_choice": auto_choice,
                "selected": selected,
                "selected_available": selected_ok,
                "selected_description": description,
                "meters": [r.to_dict() for r in results],
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0 if selected_ok else 1
    for r in results:
        mark = "yes" if r.available else "no "
        kind = " (estimate)" if r.available and r.estimated else ""
        print(f"  {mark} {r.name:<9} {r.detail}{kind}")
    print(f"\npower.meter = {power.meter!r} -> {selected}")
    if description is None:
        print(f"  {selected} is not available here; see its line above for how to fix it")
        return 1
    print(description)
    return 0
