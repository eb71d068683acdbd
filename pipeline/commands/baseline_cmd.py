"""``exitflow train baseline --name lf|image|audio --dataset avmnist``."""

from __future__ import annotations

import argparse

from exitflow.pipeline.artifacts import DATASETS
from exitflow.pipeline.commands import command_line
from exitflow.pipeline.config import Config
from exitflow.pipeline.errors import ExitflowError


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = groups["train"].add_parser("baseline", help="train the late-fusion or a uni-modal baseline")
    parser.add_argument("--name", default="lf", help="lf (late fusion), image or audio (default: %(default)s)")
    parser.add_argument("--dataset", choices=DATASETS, default="avmnist")
    parser.add_argument("--augment", action="store_true",
                        help="train with the CNN family's augmentation (frequency warp, SpecAugment, shifts)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.encoders.baseline import BASELINE_NAMES  # torch: imported only when training
    from exitflow.pipeline.training.baseline import train_baseline

    if args.name not in BASELINE_NAMES:
        raise ExitflowError(f"--name must be one of {', '.join(BASELINE_NAMES)}, got {args.name!r}")

    result = train_baseline(cfg, args.name, args.dataset, command=command_line(), augment=args.augment)
    print(
        f"{result.name}: val accuracy {result.val_accuracy:.4f}, test accuracy {result.test_accuracy:.4f}, "
        f"{result.macs_per_sample:,} MACs/sample, {result.parameters:,} parameters -> {result.folder}"
    )
    return 0
