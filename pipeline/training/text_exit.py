"""The text encoder's cheap first exit: train it on the frozen MiniLM, fit every exit's temperature.

``add_embedding_exit`` loads the trained text checkpoint (heads after layers 2, 4, 6), builds the
same encoder with ``embedding_exit`` and ``temperature_scaled`` on, keeps the trained heads, and
trains only the new layer-0 head (:class:`~encoders.text.TextEmbeddingExitHead`) on the ``train``
split: cross-entropy on the labels plus the mean squared distance between its embedding and the
last exit's pooled feature (so a fusion reading that embedding gets a stand-in for the final one).
Then one temperature per exit is fitted on ``val`` (the calibration split, never test), and the
checkpoint is saved with its model card.

Run it with ``python -m exitflow.pipeline.training.text_exit [--train-limit N] [--epochs E]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from exitflow.encoders.calibration import expected_calibration_error, fit_temperature
from exitflow.encoders.checkpoint import load_encoder, read_checkpoint_config, save_encoder, write_model_card
from exitflow.encoders.text import TextEarlyExitEncoder, TextEmbeddingExitHead
from exitflow.pipeline.artifacts import encoder_folder
from exitflow.pipeline.config import Config, load_config
from exitflow.pipeline.training.encoder import encoder_card, encoder_split, evaluate_encoder, train_subset

DATASET = "avmnist-t"


@dataclasses.dataclass(frozen=True)
class EmbeddingExitSettings:
    """How the layer-0 head is trained (the card prints these)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.002
    weight_decay: float = 0.0001
    feature_weight: float = 10.0  # weight of the MSE to the last exit's pooled feature
    train_limit: int | None = 20000
    seed: int = 0
    num_threads: int = 1


@torch.no_grad()
def embedding_and_final_features(
    encoder: TextEarlyExitEncoder, texts: list[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) masked mean of the token embeddings and (N, D) last exit's pooled feature per text."""
    head0 = encoder.heads[0]
    if not isinstance(head0, TextEmbeddingExitHead):
        raise ValueError("the encoder has no embedding exit; build it with embedding_exit=True")
    last = encoder.heads[-1]
    unique = sorted(set(texts))
    where = {t: i for i, t in enumerate(unique)}
    emb, fin = [], []
    for lo in range(0, len(unique), batch_size):
        states, mask = encoder.exit_states(unique[lo : lo + batch_size])
        emb.append(head0.pool(states[0], mask))  # (B, D)
        fin.append(last.pool(states[-1], mask))  # (B, D)
    idx = torch.tensor([where[t] for t in texts])
    return torch.cat(emb)[idx], torch.cat(fin)[idx]


def train_embedding_head(
    head: TextEmbeddingExitHead,
    pooled: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    settings: EmbeddingExitSettings,
) -> list[float]:
    """Train ``head`` on pooled token embeddings (N, D): CE on ``labels`` + weighted MSE to ``target`` (N, D)."""
    if pooled.shape != target.shape or pooled.shape[0] != labels.shape[0] or pooled.shape[0] == 0:
        raise ValueError(
            f"need matching (N, D), (N, D), (N,) with N > 0, got {tuple(pooled.shape)}, "
            f"{tuple(target.shape)}, {tuple(labels.shape)}"
        )
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = -(-pooled.shape[0] // settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps)
    head.train()
    history = []
    for _ in range(settings.epochs):
        order = torch.randperm(pooled.shape[0], generator=gen)
        losses = []
        for step in range(steps):
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            logits, embedding = head.classify(pooled[idx])  # (B, C), (B, D)
            loss = F.cross_entropy(logits, labels[idx]) + settings.feature_weight * F.mse_loss(
                embedding, target[idx]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    head.eval()
    return history


@torch.no_grad()
def exit_logits(encoder: TextEarlyExitEncoder, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """(E, N, C) uncalibrated logits of every exit."""
    out = []
    for lo in range(0, len(texts), batch_size):
        states, mask = encoder.exit_states(texts[lo : lo + batch_size])
        out.append(torch.stack([encoder.head_forward(e, h, mask).logits for e, h in enumerate(states)]))
    return torch.cat(out, dim=1)


def add_embedding_exit(
    cfg: Config,
    settings: EmbeddingExitSettings,
    out: Path | None = None,
    command: str = "",
    log: Any = print,
) -> tuple[Path, dict[str, Any]]:
    """Add the layer-0 exit to the trained text checkpoint, fit temperatures on val, save with its card."""
    torch.set_num_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    folder = encoder_folder(cfg, "text")
    old_doc = read_checkpoint_config(folder)
    old = load_encoder(folder)
    if not isinstance(old, TextEarlyExitEncoder):
        raise ValueError(f"{folder} holds a {type(old).__name__}, not the text encoder")
    config = dataclasses.replace(old.config, embedding_exit=True, temperature_scaled=True)
    encoder = TextEarlyExitEncoder(config, backbone=old.backbone, tokenizer=old.tokenizer)
    kept = [h for h, layer in zip(old.heads, old.exit_layers, strict=True) if layer > 0]  # the trained heads
    for new, trained in zip(encoder.heads[1:], kept, strict=True):
        state = {k: v for k, v in trained.state_dict().items() if k != "temperature"}
        new.load_state_dict(state, strict=False)
    encoder.eval()
    for p in encoder.backbone.parameters():
        p.requires_grad_(False)
    head0 = encoder.heads[0]
    if not isinstance(head0, TextEmbeddingExitHead):
        raise TypeError("exit 0 must be the embedding exit")

    train, val = encoder_split(cfg, "train", DATASET), encoder_split(cfg, "val", DATASET)
    rows = train_subset(len(train), settings.train_limit, settings.seed)
    t0 = time.perf_counter()
    texts = [train.text[i] for i in rows]
    pooled, target = embedding_and_final_features(encoder, texts)
    labels = torch.from_numpy(np.asarray(train.labels[rows])).long()
    history = train_embedding_head(head0, pooled, target, labels, settings)
    val_texts, val_y = list(val.text), torch.from_numpy(np.asarray(val.labels)).long()
    val_pooled, val_target = embedding_and_final_features(encoder, val_texts)
    with torch.no_grad():
        _, stand_in = head0.classify(val_pooled)
    cosine = float(F.cosine_similarity(stand_in, val_target, dim=-1).mean())
    logits = exit_logits(encoder, val_texts)  # (E, N, C), uncalibrated
    temperatures = [fit_temperature(lg, val_y) for lg in logits]
    ece_before = [expected_calibration_error(lg, val_y) for lg in logits]
    ece_after = [
        expected_calibration_error(lg / t, val_y) for lg, t in zip(logits, temperatures, strict=True)
    ]
    encoder.set_temperatures(temperatures)
    seconds = time.perf_counter() - t0
    log(
        f"embedding exit trained on {len(rows)} rows in {seconds:.0f} s; val cosine to the last exit's "
        f"feature {cosine:.3f}; temperatures {[round(t, 3) for t in temperatures]}; val ECE "
        f"{[round(e, 3) for e in ece_before]} -> {[round(e, 3) for e in ece_after]}"
    )

    val_res = evaluate_encoder(encoder, val, "text")
    test_res = evaluate_encoder(encoder, encoder_split(cfg, "test", DATASET), "text")
    old_meta = old_doc.get("metadata", {})
    command = command or "python -m exitflow.pipeline.training.text_exit"
    heads_command = old_meta.get("heads_command", old_meta.get("command", ""))
    meta = {
        "dataset": DATASET,
        "command": f"{heads_command} && {command}" if heads_command else command,
        "heads_command": heads_command,
        "embedding_exit_command": command,
        "seed": settings.seed,
        "train_rows": old_meta.get("train_rows"),
        "embedding_exit_train_rows": int(len(rows)),
        "train_seconds": old_meta.get("train_seconds"),
        "embedding_exit_seconds": round(seconds, 1),
        "history": old_meta.get("history"),
        "embedding_exit_history": history,
        "embedding_exit_settings": dataclasses.asdict(settings),
        "val_cosine_to_last_feature": cosine,
        "temperatures": temperatures,
        "val_ece_before": ece_before,
        "val_ece_after": ece_after,
        "val_per_exit_accuracy": val_res["per_exit_accuracy"],
        "test_per_exit_accuracy": test_res["per_exit_accuracy"],
        "val_exit_macs": val_res["exit_macs"],
        "test_exit_macs": test_res["exit_macs"],
        "test_curve": test_res["curve"],
    }
    out = out or folder
    save_encoder(encoder, out, meta)
    card = encoder_card(
        encoder, "text", DATASET, meta["command"], settings, len(rows), seconds, val_res, test_res
    )
    card["training"] = (
        f"Heads after layers 2/4/6: {old_meta.get('train_rows')} train rows, settings in config.json "
        f"(`history`). Embedding exit: {len(rows)} train rows, {settings.epochs} epochs, "
        f"{seconds / 60:.1f} min on CPU; settings {dataclasses.asdict(settings)}."
    )
    card["notes"] = [
        f"Exit 0 sits on the token embeddings (layer 0: no transformer layer runs). Its embedding "
        f"reproduces the last exit's pooled feature with a mean cosine of {cosine:.3f} on val.",
        "Temperatures fitted on val (NLL, `encoders/calibration.py`): "
        + ", ".join(
            f"exit {i} T={t:.3f} (ECE {b:.3f} -> {a:.3f})"
            for i, (t, b, a) in enumerate(zip(temperatures, ece_before, ece_after, strict=True))
        )
        + "; logits are divided by them, so the exit rule reads calibrated scores (argmax unchanged).",
        "MACs: mean over the split's real token counts (each text costed at its own length).",
        *card["notes"],
    ]
    write_model_card(out, card)
    return out, {"val": val_res, "test": test_res, "temperatures": temperatures, "cosine": cosine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=EmbeddingExitSettings.train_limit)
    parser.add_argument("--epochs", type=int, default=EmbeddingExitSettings.epochs)
    parser.add_argument(
        "--out", type=Path, default=None, help="checkpoint folder (default: the text checkpoint)"
    )
    args = parser.parse_args(argv)
    settings = EmbeddingExitSettings(epochs=args.epochs, train_limit=args.train_limit)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"python -m exitflow.pipeline.training.text_exit {argv_text}".strip()
    out, res = add_embedding_exit(load_config(), settings, args.out, command)
    for name in ("val", "test"):
        r = res[name]
        print(
            f"{name}: "
            + "  ".join(
                f"exit {i} (layer {layer}) {a:.4f} @ {m / 1e6:.2f} M MACs"
                for i, (layer, a, m) in enumerate(
                    zip(r["exit_layers"], r["per_exit_accuracy"], r["exit_macs"], strict=True)
                )
            )
        )
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
