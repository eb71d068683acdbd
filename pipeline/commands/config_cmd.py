"""``exitflow config show`` and ``exitflow config validate [PATH]``."""

from __future__ import annotations

import argparse
import sys

from exitflow.pipeline.config import Config, dump_config, load_config
from exitflow.pipeline.errors import ConfigError


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("config", help="show or validate a configuration")
    what = parser.add_subparsers(dest="config_what", metavar="WHAT")
    show = what.add_parser("show", help="print the effective config (file + --set overrides)")
    show.set_defaults(func=_show)
    validate = what.add_parser("validate", help="check a config file; one line per problem")
    validate.add_argument("path", nargs="?", default=None, help="file to check (default: --config)")
    validate.set_defaults(func=_validate, needs_config=False)
    parser.set_defaults(func=None, group_parser=parser)


def _show(args: argparse.Namespace, cfg: Config) -> int:
    sys.stdout.write(f"# effective config from {cfg.source_path}\n")
    sys.stdout.write(dump_config(cfg))
    return 0


def _validate(args: argparse.Namespace, cfg: Config | None) -> int:
    path = args.path or args.config
    try:
        load_config(path, args.overrides)
    except ConfigError as e:
        for issue in e.issues:
            print(f"{path}: {issue}")
        return 1
    print(f"{path}: ok")
    return 0
