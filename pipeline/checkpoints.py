"""Checkpoint folders: ``model.safetensors`` + ``config.json`` + ``MODEL_CARD.md``, written atomically.

A checkpoint folder is written into a temporary sibling and renamed into place, so an
interrupted save never leaves a half-written checkpoint behind. ``config.json`` and the card
record the sha256 of every weights file; loading verifies it (when recorded) and refuses a
truncated file, NaN/inf weights and tensors of the wrong shape, each with one
:class:`CheckpointError` line naming the file and the command that rebuilds it (the checks
live in ``encoders.checkpoint`` and serve the encoder checkpoints too).

``python -m exitflow.pipeline.checkpoints stamp FOLDER...`` records the sha256 in the
``config.json`` of checkpoints saved before checksums existed (weights untouched).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from exitflow.encoders.baseline import BaselineConfig
from exitflow.encoders.checkpoint import (
    CHECKSUM_KEY,
    CheckpointLoadError,
    check_fields,
    check_shapes,
    checksum_lines,
    file_sha256,
    read_json_object,
    read_state,
    recorded_command,
    recorded_sha256,
)
from exitflow.pipeline.config import FusionConfig
from exitflow.pipeline.config_schema import build
from exitflow.pipeline.errors import CheckpointError
from exitflow.pipeline.folders import swap_in

WEIGHTS = "model.safetensors"
META = "config.json"
CARD = "MODEL_CARD.md"

# folder-name prefix -> the command that rebuilds such a checkpoint (when config.json names none);
# {a} and {b} are the first and last "_"-separated parts of the rest of the name
REBUILD_BY_PREFIX = {
    "baseline_": "exitflow train baseline --name {a} --dataset {b}",
    "cnn_": "exitflow train cnn --dataset {b}",
    "fusion_late_": "exitflow train joint --dataset {b}",
    "fusion_transformer_": "exitflow --set data.dataset={b} train fusion --inputs encoders",
    "fusion": "exitflow train fusion",
    "joint_": "exitflow train joint --dataset {b}",
}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1 << 16


def _meta_problems(meta: dict[str, Any]) -> list[str]:
    """What the loaders read from ``config.json`` by kind, checked before anything is built from it."""
    kind = meta.get("kind")
    problems: list[str] = []
    if kind == "baseline":
        problems += check_fields(BaselineConfig, meta.get("arch"), "arch")
    if kind in ("fusion_late", "fusion_transformer"):
        dims = meta.get("dims")
        if not (isinstance(dims, dict) and dims and all(_count(v) for v in dims.values())):
            problems.append("dims: expected an object of modality -> width (1..65536)")
        if not _count(meta.get("num_classes")):
            problems.append("num_classes: expected an integer in 1..65536")
        if kind == "fusion_late" and not _count(meta.get("hidden_dim")):
            problems.append("hidden_dim: expected an integer in 1..65536")
    if kind == "fusion_grid":
        dims = meta.get("dims")
        if not (isinstance(dims, dict) and len(dims) >= 1 and all(
                isinstance(v, list) and v and all(_count(d) for d in v) for v in dims.values())):
            problems.append("dims: expected an object of modality -> list of exit widths (1..65536)")
        for key in ("num_classes", "hidden_dim"):
            if not _count(meta.get(key)):
                problems.append(f"{key}: expected an integer in 1..65536")
    if kind in ("fusion", "fusion_transformer"):
        errors: list[str] = []
        build(FusionConfig, meta.get("fusion"), "fusion", errors)
        problems += errors
    return problems




def rebuild_command(folder: Path, meta: dict[str, Any] | None = None) -> str:
    """The command that rebuilds ``folder``: the one ``config.json`` records, else one by folder name."""
    command = recorded_command(meta)
    if command is not None:
        return command
    name = folder.name if folder.name not in ("fusion", "image", "audio", "text") else folder.parent.name
    for prefix, template in REBUILD_BY_PREFIX.items():
        if name.startswith(prefix):
            parts = name[len(prefix) :].split("_")
            return template.format(a=parts[0], b=parts[-1])
    return "the `exitflow train ...` command in its MODEL_CARD.md"


def save_checkpoint(folder: Path, model: torch.nn.Module, meta: dict[str, Any], card: str) -> Path:
    """Write weights, metadata (+ the weights' sha256) and model card to ``folder`` (replacing an older one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        meta = {**meta, CHECKSUM_KEY: {WEIGHTS: file_sha256(tmp / WEIGHTS)}}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (tmp / CARD).write_text(card.rstrip() + "\n\n" + "\n".join(checksum_lines(tmp)))
        swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; missing, damaged or non-object files raise CheckpointError."""
    path = folder / META
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {folder} ({META} missing); train it first with `{rebuild_command(folder)}`"
        )
    meta: dict[str, Any] | None = None
    try:
        meta = read_json_object(path, rebuild_command(folder))
        recorded_sha256(meta)
        problems = _meta_problems(meta)
        if problems:
            raise CheckpointLoadError(f"{path}: {'; '.join(problems[:3])}")
    except CheckpointLoadError as e:
        message = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
        if "rebuild it with" not in message:
            message += f"; rebuild it with `{rebuild_command(folder, meta)}` or restore the file"
        raise CheckpointError(message) from e
    return meta


def load_weights(folder: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load ``folder/model.safetensors`` into ``model`` after verifying checksum, values and shapes.

    Raises:
        CheckpointError: one line naming the file and the command that rebuilds it.
    """
    path = folder / WEIGHTS
    meta = read_meta(folder) if (folder / META).is_file() else {}
    rebuild = rebuild_command(folder, meta)
    if not path.is_file():
        raise CheckpointError(f"no weights at {path}; train the model first with `{rebuild}`")
    try:
        state = read_state(path, recorded_sha256(meta), rebuild)
        check_shapes(state, model, path, rebuild)
    except CheckpointLoadError as e:
        raise CheckpointError(str(e)) from e
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}; the config.json beside it may be stale; rebuild it with "
            f"`{rebuild}`"
        )
    return model


def stamp_checksums(folder: Path) -> str:
    """Record the sha256 of ``folder``'s weights files in its ``config.json`` (the weights are not touched).

    Returns ``"stamped"``, ``"ok"`` (already recorded and matching) or ``"skipped"`` (no weights or
    config). A recorded checksum that does not match raises CheckpointError: the file changed.
    """
    meta_path = folder / META
    weights = sorted(folder.glob("*.safetensors"))
    if not meta_path.is_file() or not weights:
        return "skipped"
    meta = read_meta(folder)
    sums = {w.name: file_sha256(w) for w in weights}
    recorded = meta.get(CHECKSUM_KEY)
    if recorded == sums:
        return "ok"
    if isinstance(recorded, dict):
        for name, digest in recorded.items():
            if sums.get(name) != digest:
                raise CheckpointError(f"{folder / name}: sha256 differs from the one recorded in {meta_path}")
    meta[CHECKSUM_KEY] = sums
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return "stamped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exitflow.pipeline.checkpoints", description="checkpoint maintenance"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    stamp = sub.add_parser(
        "stamp", help="record weight checksums in config.json of every checkpoint under FOLDER"
    )
    stamp.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for root in args.folders:
        for meta_path in sorted(root.rglob(META)):
            try:
                print(f"{stamp_checksums(meta_path.parent):8s} {meta_path.parent}")
            except CheckpointError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
