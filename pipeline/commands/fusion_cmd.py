"""``exitflow train fusion [--inputs encoders|stems]``: adaptive fusion on avmnist-t (settings in ``fusion:``)."""

from __future__ import annotations

import argparse
import json

from exitflow.pipeline.config import Config


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = groups["train"].add_parser("fusion", help="train adaptive fusion (MuE + SmartTrim) on avmnist-t")
    parser.add_argument(
        "--inputs", choices=("encoders", "stems"), default="encoders",
        help="encoders: the engine's fusion exit over the trained encoders' tokens "
        "(checkpoints/fusion_transformer_<dataset>); stems: the patch-stem study (checkpoints/fusion-NAME)",
    )
    parser.add_argument("--name", default="default", help="stems only: checkpoint name checkpoints/fusion-NAME")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    if args.inputs == "encoders":
        import sys

        from exitflow.pipeline.artifacts import transformer_folder
        from exitflow.pipeline.training.transformer_exit import train_transformer_exit

        meta = train_transformer_exit(cfg, cfg.data.dataset, command="exitflow " + " ".join(sys.argv[1:]))
        print(json.dumps({k: v["test"]["accuracy"] for k, v in meta["subsets"].items()}, indent=2))
        print(f"MuE thresholds: {meta['exit_thresholds']}")
        print(f"saved -> {transformer_folder(cfg, cfg.data.dataset)}")
        return 0
    from exitflow.pipeline.training.fusion_stems import train_fusion_stems

    result = train_fusion_stems(cfg, args.name)
    print(json.dumps(result.metrics["test"], indent=2))
    print(f"saved -> {result.folder}")
    return 0
