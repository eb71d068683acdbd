"""The ``exitflow`` command line: parse, load the config, call one function.

Each subcommand lives in ``pipeline/commands/<name>.py`` (see that package's docstring).
Errors derived from :class:`ExitflowError` print as ``exitflow: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from exitflow.pipeline.config import DEFAULT_CONFIG_PATH, load_config
from exitflow.pipeline.errors import ConfigError, ExitflowError

COMMAND_MODULES = (
    "exitflow.pipeline.commands.config_cmd",
    "exitflow.pipeline.commands.data_cmd",
    "exitflow.pipeline.commands.baseline_cmd",
    "exitflow.pipeline.commands.replay_cmd",
    "exitflow.pipeline.commands.report_cmd",
    "exitflow.pipeline.commands.demo_cmd",
    "exitflow.pipeline.commands.adaptive_cmd",
    "exitflow.pipeline.commands.devices_cmd",
    "exitflow.pipeline.commands.encoder_cmd",
    "exitflow.pipeline.commands.cnn_cmd",
    "exitflow.pipeline.commands.fusion_cmd",
    "exitflow.pipeline.commands.live_cmd",
    "exitflow.pipeline.commands.bundle_cmd",
    "exitflow.pipeline.commands.recalibrate_cmd",
)
GROUPS = {"train": "train a model", "eval": "evaluate a trained model"}


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can act on: printed as one line. Anything else is a bug and keeps its traceback."""
    from exitflow.devices.errors import DeviceError
    from exitflow.encoders.base import EncoderInputError
    from exitflow.encoders.checkpoint import CheckpointLoadError
    from exitflow.pipeline.data.spectrogram import AudioInputError
    from exitflow.scheduler.errors import SchedulerError

    return (
        ExitflowError, DeviceError, EncoderInputError, AudioInputError, SchedulerError,
        CheckpointLoadError,  # also covers ResumeStateError (a damaged resume file)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exitflow",
        description="Energy-aware multimodal early-exit inference (see README.md).",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="YAML config (default: %(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set replay.limit=100 (repeatable)",
    )
    parser.add_argument("--data-root", default=None, help="data root (same layout as ../shared/data)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_text in GROUPS.items():
        group = sub.add_parser(name, help=help_text)
        groups[name] = group.add_subparsers(dest=f"{name}_what", metavar="WHAT")
        group.set_defaults(func=None, group_parser=group)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub, groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    try:
        overrides = list(args.overrides)
        if args.data_root is not None:
            overrides.append(f"data.root={args.data_root}")
        if getattr(args, "needs_config", True):
            cfg = load_config(args.config, overrides)
        else:
            cfg = None
        return int(args.func(args, cfg) or 0)
    except ConfigError as e:
        print(f"exitflow: config error in {e.source}:", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
    except user_errors() as e:
        print(f"exitflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("exitflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
