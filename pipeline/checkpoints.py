"""Checkpoint folders: ``model.safetensors`` + ``config.json`` + ``MODEL_CARD.md``, written atomically.

A checkpoint folder is written into a temporary sibling and renamed into place, so an
interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from exitflow.pipeline.config import REPO_ROOT
from exitflow.pipeline.errors import CheckpointError
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
META = "config.json"
CARD = "MODEL_CARD.md"


def checkpoint_dir(name: str, base: str | Path = "checkpoints") -> Path:
    base = Path(base)
    return (base if base.is_absolute() else REPO_ROOT / base) / name


def save_checkpoint(folder: Path, model: torch.nn.Module, meta: dict[str, Any], card: str) -> Path:
    """Write weights, metadata and model card to ``folder`` (replacing an older one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (tmp / CARD).write_text(card)
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {folder} ({META} missing); train it first (see the README's training section)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); retrain or restore the checkpoint") from e


def load_weights(folder: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load ``folder/model.safetensors`` into ``model`` strictly; mismatches are CheckpointErrors."""
    path = folder / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"no weights at {path}; train the model first")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for damaged files
        raise CheckpointError(f"{path} is unreadable ({e}); retrain or restore it") from e
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}; the config.json beside it may be stale"
        )
    return model
