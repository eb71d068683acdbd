"""Save and load early-exit encoders as safetensors + a JSON config, and write model cards.

A checkpoint folder holds ``model.safetensors`` (for the text encoder: the exit heads only,
since its pretrained backbone stays frozen and comes from its own package), ``config.json``
(which encoder class, its config, the exit layers, the sha256 of the weights and free-form
metadata) and ``MODEL_CARD.md``.

Loading trusts nothing it reads: the config's shape and types are checked, the weights'
sha256 is compared with the one recorded at save time (when recorded), a truncated or
foreign file, a NaN/inf weight and a tensor of the wrong shape are each refused with one
:class:`CheckpointLoadError` line naming the file and the command that rebuilds it.
:func:`read_state` and :func:`check_shapes` serve the pipeline's checkpoints too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.cnn import CNNEarlyExitEncoder, CNNEncoderConfig
from exitflow.encoders.text import TextEarlyExitEncoder, TextEncoderConfig
from exitflow.encoders.vit import ViTEarlyExitEncoder, ViTEncoderConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "MODEL_CARD.md"
CHECKSUM_KEY = "weights_sha256"  # config.json: {weights file name: sha256 hex digest}
MAX_CONFIG_BYTES = 4 << 20
ENCODER_REBUILD = "exitflow train encoder --modality {modality}"
ENCODER_KINDS: dict[str, type] = {"vit": ViTEncoderConfig, "text": TextEncoderConfig, "cnn": CNNEncoderConfig}


class CheckpointLoadError(ValueError):
    """A checkpoint folder is missing files or does not match the encoder it describes."""


# ---------------------------------------------------------------- verified weights (shared)
def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def recorded_sha256(doc: dict[str, Any], name: str = WEIGHTS_NAME) -> str | None:
    """The sha256 ``config.json`` recorded for weights file ``name``, or None (older checkpoints)."""
    sums = doc.get(CHECKSUM_KEY)
    if sums is None:
        return None
    value = sums.get(name) if isinstance(sums, dict) else None
    if not isinstance(value, str) or len(value) != 64:
        raise CheckpointLoadError(
            f"{CHECKSUM_KEY} must map {name} to a 64-digit sha256, found {_one_line(sums, 80)}"
        )
    return value


def read_state(path: str | Path, expected_sha256: str | None, rebuild: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking its sha256; refuse damaged files and NaN/inf weights.

    Args:
        path: The ``.safetensors`` file.
        expected_sha256: The digest recorded at save time (None skips the comparison).
        rebuild: The command that rebuilds the checkpoint (goes into every error line).

    Raises:
        CheckpointLoadError: one line naming ``path`` and ``rebuild``.
    """
    path = Path(path)
    fix = f"rebuild it with `{rebuild}` or restore the file"
    if not path.is_file():
        raise CheckpointLoadError(f"{path}: missing; {fix}")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256.lower():
            raise CheckpointLoadError(
                f"{path}: sha256 {actual[:16]}... differs from the {expected_sha256[:16]}... recorded in "
                f"{CONFIG_NAME} (damaged or replaced); {fix}"
            )
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise CheckpointLoadError(
            f"{path}: truncated or not a safetensors file ({_one_line(e, 100)}); {fix}"
        ) from e
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise CheckpointLoadError(f"{path}: tensor {key} holds {bad} NaN/inf value(s); {fix}")
    return state


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header (no data read)."""
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict


def check_shapes(
    state: dict[str, Any], model: torch.nn.Module, path: str | Path, rebuild: str, prefix: str = ""
) -> None:
    """Every tensor of ``state`` that ``model`` has (under ``prefix``) must have the model's shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(prefix)}
    for key, value in state.items():
        shape = tuple(value.shape) if hasattr(value, "shape") else tuple(value)
        if key in expected and shape != expected[key]:
            raise CheckpointLoadError(
                f"{path}: tensor {key} has shape {list(shape)}, the model built from {CONFIG_NAME} expects "
                f"{list(expected[key])} ({CONFIG_NAME} and weights disagree); rebuild it with `{rebuild}`"
            )


# ---------------------------------------------------------------- encoders
def _trainable_state(encoder: EarlyExitEncoder) -> dict[str, torch.Tensor]:
    state = encoder.state_dict()
    if isinstance(encoder, TextEarlyExitEncoder):
        state = {k: v for k, v in state.items() if k.startswith("heads.")}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_encoder(
    encoder: EarlyExitEncoder, folder: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (with the weights' sha256) for ``encoder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, ViTEarlyExitEncoder):
        kind, cfg = "vit", encoder.config.to_dict()
    elif isinstance(encoder, TextEarlyExitEncoder):
        kind, cfg = "text", encoder.config.to_dict()
    elif isinstance(encoder, CNNEarlyExitEncoder):
        kind, cfg = "cnn", encoder.config.to_dict()  # temperatures travel in the weights (a buffer)
    else:
        raise TypeError(
            f"save_encoder supports the ViT, text and CNN early-exit encoders, got {type(encoder).__name__}"
        )
    save_file(_trainable_state(encoder), str(out / WEIGHTS_NAME))
    doc = {
        "kind": kind,
        "modality": encoder.modality,
        "encoder_config": cfg,
        "exit_layers": list(encoder.exit_layers),
        "metadata": metadata or {},
        CHECKSUM_KEY: {WEIGHTS_NAME: file_sha256(out / WEIGHTS_NAME)},
    }
    (out / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


def recorded_command(meta: Any) -> str | None:
    """The ``exitflow ...`` command a checkpoint's metadata records, if it is a sane one."""
    command = meta.get("command") if isinstance(meta, dict) else None
    if isinstance(command, str) and command.startswith("exitflow") and len(command) < 400 and command.isprintable():
        return command
    return None


def rebuild_command(doc: dict[str, Any] | None, folder: str | Path = "") -> str:
    """The command that rebuilds an encoder checkpoint: the recorded one, else the generic one."""
    command = recorded_command(doc.get("metadata") if isinstance(doc, dict) else None)
    if command is not None:
        return command
    modality = doc.get("modality") if isinstance(doc, dict) else None
    if modality not in ("image", "audio", "text"):
        name = Path(folder).name
        modality = next((m for m in ("image", "audio", "text") if name.startswith(m)), "<modality>")
    return ENCODER_REBUILD.format(modality=modality)  # the names `exitflow train encoder --modality` takes


def read_json_object(path: Path, rebuild: str) -> dict[str, Any]:
    """A ``config.json`` as a dict; unreadable, oversized, non-JSON or non-object files raise one line."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointLoadError(
                f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; rebuild it with `{rebuild}`"
            )
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, CheckpointLoadError):
            raise
        raise CheckpointLoadError(
            f"{path}: not valid JSON ({_one_line(e, 100)}); rebuild it with `{rebuild}` or restore the file"
        ) from e
    if not isinstance(doc, dict):
        raise CheckpointLoadError(
            f"{path}: expected a JSON object, found {type(doc).__name__}; rebuild it with `{rebuild}`"
        )
    return doc


def check_fields(cls: type, data: Any, where: str) -> list[str]:
    """Type problems of ``data`` against dataclass ``cls`` (types taken from the defaults)."""
    if not isinstance(data, dict):
        return [f"{where}: expected an object, found {type(data).__name__}"]
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    problems = [f"{where}.{_one_line(k, 40)}: unknown key" for k in data if k not in fields]
    for name, value in data.items():
        default = fields.get(name, dataclasses.MISSING)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int) or name == "max_tokens":  # max_tokens: int | None
            ok = (value is None and default is None) or (
                isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1 << 16
            )
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif isinstance(default, str):
            ok = isinstance(value, str) and 0 < len(value) <= 400 and "\x00" not in value
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and all(isinstance(v, int) and 0 < v <= 1 << 10 for v in value)
        else:
            ok = True
        if not ok:
            problems.append(f"{where}.{name}: unexpected value {_one_line(repr(value), 40)}")
    return problems


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json`` of an encoder checkpoint, checked for shape and types."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointLoadError(f"no {CONFIG_NAME} in {folder}; train one with `exitflow train encoder`")
    doc = read_json_object(path, rebuild_command(None, folder))
    rebuild = rebuild_command(doc, folder)
    kind = doc.get("kind")
    problems = []
    if kind not in ENCODER_KINDS:
        problems.append(f"kind: expected one of {list(ENCODER_KINDS)}, found {_one_line(repr(kind), 40)}")
    if not isinstance(doc.get("modality"), str):
        problems.append("modality: expected a string")
    layers = doc.get("exit_layers")
    if not (
        isinstance(layers, list)
        and layers
        and all(isinstance(v, int) and not isinstance(v, bool) for v in layers)
    ):
        problems.append("exit_layers: expected a non-empty list of integers")
    if not isinstance(doc.get("metadata", {}), dict):
        problems.append("metadata: expected an object")
    if kind in ENCODER_KINDS:
        problems += check_fields(ENCODER_KINDS[kind], doc.get("encoder_config"), "encoder_config")
    if problems:
        raise CheckpointLoadError(f"{path}: {'; '.join(problems[:3])}; rebuild it with `{rebuild}`")
    try:
        recorded_sha256(doc)
    except CheckpointLoadError as e:
        raise CheckpointLoadError(f"{path}: {e}; rebuild it with `{rebuild}`") from e
    return doc


def load_encoder(folder: str | Path, **text_kwargs: Any) -> EarlyExitEncoder:
    """Rebuild the encoder described by ``folder/config.json`` and load its verified weights (eval mode).

    Args:
        folder: A checkpoint folder written by :func:`save_encoder`.
        **text_kwargs: ``backbone=``/``tokenizer=`` for a text encoder (else loaded from its config).

    Raises:
        CheckpointLoadError: one line naming the file and the command that rebuilds it.
    """
    doc = read_checkpoint_config(folder)
    rebuild = rebuild_command(doc, folder)
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointLoadError(f"no {WEIGHTS_NAME} in {folder}; rebuild it with `{rebuild}`")
    try:
        shapes = tensor_shapes(weights)
    except Exception as e:  # a truncated header or a foreign file
        raise CheckpointLoadError(
            f"{weights}: truncated or not a safetensors file ({_one_line(e, 100)}); rebuild it with `{rebuild}`"
        ) from e
    encoder: EarlyExitEncoder
    try:
        if doc["kind"] == "vit":
            cfg = ViTEncoderConfig.from_dict(doc["encoder_config"])
            with torch.device("meta"):  # shapes first: an absurd config must not allocate
                check_shapes(shapes, ViTEarlyExitEncoder(cfg), weights, rebuild)
            encoder, strict = ViTEarlyExitEncoder(cfg), True
        elif doc["kind"] == "cnn":
            cnn_cfg = CNNEncoderConfig.from_dict(doc["encoder_config"])
            with torch.device("meta"):
                check_shapes(shapes, CNNEarlyExitEncoder(cnn_cfg), weights, rebuild)
            encoder, strict = CNNEarlyExitEncoder(cnn_cfg), True
        else:
            text_cfg = TextEncoderConfig.from_dict(doc["encoder_config"])
            encoder, strict = TextEarlyExitEncoder(text_cfg, **text_kwargs), False
    except CheckpointLoadError:
        raise
    except Exception as e:  # the config passed the type checks but does not describe a buildable model
        raise CheckpointLoadError(
            f"{Path(folder) / CONFIG_NAME}: encoder_config does not build ({_one_line(e, 120)}); "
            f"rebuild it with `{rebuild}`"
        ) from e
    if list(encoder.exit_layers) != list(doc["exit_layers"]):
        raise CheckpointLoadError(
            f"{folder}: rebuilt exits {list(encoder.exit_layers)} differ from the saved {doc['exit_layers']}; "
            f"rebuild it with `{rebuild}`"
        )
    state = read_state(weights, recorded_sha256(doc), rebuild)
    check_shapes(state, encoder, weights, rebuild)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if not strict:
        missing = [k for k in missing if k.startswith("heads.")]
    if missing or unexpected:
        raise CheckpointLoadError(
            f"{weights}: weights do not match the encoder (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"rebuild it with `{rebuild}`"
        )
    return encoder.eval()


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def checksum_lines(folder: str | Path) -> list[str]:
    """Model-card lines giving the sha256 of every weights file in ``folder``."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return []
    lines = ["## Files (sha256, verified on load)", ""]
    return lines + [f"- `{f.name}`: `{file_sha256(f)}`" for f in files] + [""]


def write_model_card(folder: str | Path, card: dict[str, Any]) -> Path:
    """Write ``MODEL_CARD.md`` from measured facts.

    ``card`` keys: title, summary, data, command, seed, backbone, exits (rows with exit, layer,
    head, head_params, head_macs, cumulative_macs, val_accuracy, test_accuracy), curve (rows
    of the threshold curve), notes (list of lines), training (free text). The sha256 of the
    folder's weights files is appended.
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
    if card.get("notes"):
        lines.append("")
    lines += checksum_lines(folder)
    path = Path(folder) / CARD_NAME
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
