"""``exitflow train encoder`` and ``exitflow eval encoder``: LGViT-style early-exit encoders.

Train: builds the modality's encoder from the ``encoder``/``lgvit``/``train`` config sections,
runs the two-stage training (resumable from ``encoder.run_dir``), saves a safetensors
checkpoint and writes its model card with measured per-exit accuracy and MACs.
Eval: per-exit accuracy and the accuracy / speed-up curve over thresholds, optionally as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from exitflow.pipeline.artifacts import SPLITS
from exitflow.pipeline.commands import command_line, output_file, positive_int
from exitflow.pipeline.config import Config, resolve_path
from exitflow.pipeline.errors import CheckpointError

ENCODER_MODALITIES = ("image", "audio", "text")


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    train = groups["train"].add_parser("encoder", help="train an early-exit encoder (LGViT two-stage)")
    _common(train)
    train.add_argument(
        "--out", default=None, help="checkpoint folder (default: checkpoints/<modality>_<dataset>)"
    )
    train.add_argument("--run-name", default=None, help="resumable run folder name under encoder.run_dir")
    train.add_argument("--fresh", action="store_true", help="ignore saved run state and start over")
    train.add_argument(
        "--eval-limit",
        type=positive_int,
        default=None,
        help="evaluate the card's val/test figures on the first N samples of each split",
    )
    train.set_defaults(func=_train)
    ev = groups["eval"].add_parser("encoder", help="per-exit accuracy and accuracy / speed-up curve")
    _common(ev)
    ev.add_argument(
        "--checkpoint", default=None, help="checkpoint folder (default: checkpoints/<modality>_<dataset>)"
    )
    ev.add_argument("--split", default="test", choices=SPLITS)
    ev.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N samples only")
    ev.add_argument("--json", dest="json_out", type=output_file, default=None, help="also write the results as JSON here")
    ev.set_defaults(func=_eval)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", required=True, choices=ENCODER_MODALITIES)
    parser.add_argument(
        "--dataset",
        default=None,
        choices=("avmnist", "avmnist-t"),
        help="default: avmnist for image/audio, avmnist-t for text",
    )


# ------------------------------------------------------------------------------- building blocks














# ------------------------------------------------------------------------------------- commands




def _train(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.training.encoder import format_eval, train_encoder

    out, test_res = train_encoder(
        cfg, args.modality, args.dataset, args.out, args.run_name, args.fresh, args.eval_limit, command_line(),
    )
    print(format_eval(test_res))
    print(f"saved {out}")
    return 0


def _eval(args: argparse.Namespace, cfg: Config) -> int:
    import torch

    from exitflow.encoders.checkpoint import CheckpointLoadError, load_encoder
    from exitflow.pipeline.training.encoder import (
        DEFAULT_DATASET,
        encoder_split,
        evaluate_encoder,
        format_eval,
    )

    modality = args.modality
    dataset = args.dataset or DEFAULT_DATASET[modality]
    folder = (
        Path(args.checkpoint)
        if args.checkpoint
        else (resolve_path(cfg, cfg.encoder.checkpoint_root) / f"{modality}_{dataset}")
    )
    if cfg.engine.num_threads:
        torch.set_num_threads(cfg.engine.num_threads)
    try:
        encoder = load_encoder(folder)
    except CheckpointLoadError as e:
        raise CheckpointError(str(e)) from e
    if encoder.modality != modality:
        raise CheckpointError(f"{folder} holds a {encoder.modality} encoder, not {modality}")
    result = evaluate_encoder(
        encoder,
        encoder_split(cfg, args.split, dataset),
        modality,
        args.limit,
        rule="entropy" if cfg.encoder.exit_rule == "entropy" else "max_prob",
    )
    print(format_eval(result))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0
