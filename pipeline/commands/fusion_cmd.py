"""``exitflow train fusion --name NAME``: adaptive fusion on avmnist-t (settings in ``fusion:``)."""

from __future__ import annotations

import argparse
import json

from pipeline.config import Config


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = groups["train"].add_parser("fusion", help="train adaptive fusion (MuE + SmartTrim) on avmnist-t")
    parser.add_argument("--name", default="default", help="checkpoint name: checkpoints/fusion-NAME")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.fusion_runner import train_fusion

    result = train_fusion(cfg, args.name)
    print(json.dumps(result.metrics["test"], indent=2))
    print(f"saved -> {result.folder}")
    return 0
