"""Save and load early-exit encoders as safetensors + a JSON config, and write model cards.

A checkpoint folder holds ``model.safetensors`` (for the text encoder: the exit heads only,
since its pretrained backbone stays frozen and comes from its own package), ``config.json``
(which encoder class, its config, the exit layers, and free-form metadata) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.text import TextEarlyExitEncoder, TextEncoderConfig
from exitflow.encoders.vit import ViTEarlyExitEncoder, ViTEncoderConfig
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "MODEL_CARD.md"


class CheckpointLoadError(ValueError):
    """A checkpoint folder is missing files or does not match the encoder it describes."""


def _trainable_state(encoder: EarlyExitEncoder) -> dict[str, torch.Tensor]:
    state = encoder.state_dict()
    if isinstance(encoder, TextEarlyExitEncoder):
        state = {k: v for k, v in state.items() if k.startswith("heads.")}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_encoder(
    encoder: EarlyExitEncoder, folder: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for ``encoder`` into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, ViTEarlyExitEncoder):
        kind, cfg = "vit", encoder.config.to_dict()
    elif isinstance(encoder, TextEarlyExitEncoder):
        kind, cfg = "text", encoder.config.to_dict()
    else:
        raise TypeError(
            f"save_encoder supports ViTEarlyExitEncoder and TextEarlyExitEncoder, got {type(encoder).__name__}"
        )
    save_file(_trainable_state(encoder), str(out / WEIGHTS_NAME))
    doc = {
        "kind": kind,
        "modality": encoder.modality,
        "encoder_config": cfg,
        "exit_layers": list(encoder.exit_layers),
        "metadata": metadata or {},
    }
    (out / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointLoadError(f"no {CONFIG_NAME} in {folder}; train one with `exitflow train encoder`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_encoder(folder: str | Path, **text_kwargs: Any) -> EarlyExitEncoder:
    """Rebuild the encoder described by ``folder/config.json`` and load its weights (eval mode).

    Args:
        folder: A checkpoint folder written by :func:`save_encoder`.
        **text_kwargs: ``backbone=``/``tokenizer=`` for a text encoder (else loaded from its config).
    """
    doc = read_checkpoint_config(folder)
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointLoadError(f"no {WEIGHTS_NAME} in {folder}")
    encoder: EarlyExitEncoder
    if doc["kind"] == "vit":
        encoder = ViTEarlyExitEncoder(ViTEncoderConfig.from_dict(doc["encoder_config"]))
        strict = True
    elif doc["kind"] == "text":
        encoder = TextEarlyExitEncoder(TextEncoderConfig.from_dict(doc["encoder_config"]), **text_kwargs)
        strict = False
    else:
        raise CheckpointLoadError(f"{folder}: unknown encoder kind {doc['kind']!r}")
    if list(encoder.exit_layers) != list(doc["exit_layers"]):
        raise CheckpointLoadError(
            f"{folder}: rebuilt exits {list(encoder.exit_layers)} differ from the saved {doc['exit_layers']}"
        )
    state = load_file(str(weights))
    missing, unexpected = encoder.load_state_dict(state, strict=strict)
    if not strict:
        missing = [k for k in missing if k.startswith("heads.")]
    if missing or unexpected:
        raise CheckpointLoadError(
            f"{folder}: weights do not match the encoder (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return encoder.eval()


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_model_card(folder: str | Path, card: dict[str, Any]) -> Path:
    """Write ``MODEL_CARD.md`` from measured facts.

    ``card`` keys: title, summary, data, command, seed, backbone, exits (rows with exit, layer,
    head, head_params, head_macs, cumulative_macs, val_accuracy, test_accuracy), curve (rows
    of the threshold curve), notes (list of lines), training (free text).
    """
    lines = [f"# {card['title']}", "", card.get("summary", ""), "", "## Data", "", card["data"], ""]
    lines += ["## How it was made", "", "```", card["command"], "```", "", f"Seed: {card['seed']}", ""]
    if card.get("training"):
        lines += [card["training"], ""]
    if card.get("backbone"):
        lines += ["## Backbone", "", card["backbone"], ""]
    lines += ["## Exits (per-sample MACs measured with torch.utils.flop_counter, heads included)", ""]
    cols = [
        "exit",
        "layer",
        "head",
        "head_params",
        "head_macs",
        "cumulative_macs",
        "val_accuracy",
        "test_accuracy",
    ]
    lines += [_table(card["exits"], cols), ""]
    if card.get("curve"):
        lines += ["## Test accuracy / speed-up over max-softmax thresholds", ""]
        lines += [_table(card["curve"], ["threshold", "accuracy", "mac_speedup", "layer_speedup"]), ""]
    for note in card.get("notes", []):
        lines.append(f"- {note}")
    path = Path(folder) / CARD_NAME
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
