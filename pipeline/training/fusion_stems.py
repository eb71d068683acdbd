"""``exitflow train fusion``: train and evaluate adaptive fusion on avmnist-t.

Until trained early-exit encoders are wired in, the fusion reads *patch-stem tokens*: a 4x4
patch embedding of the 28x28 image (49 tokens), a 16x16 patch embedding of the 112x112
spectrogram (49 tokens) and word embeddings of the GRID command (up to 6 tokens), each with a
learned position embedding, trained jointly with the fusion. Everything the issue measures
(trimmed vs full accuracy, fusion MACs, MuE exit layers, decoder layers per step) concerns the
fusion and decoder, whose inputs are token states of whatever produced them.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitflow.encoders.decoder import DecoderConfig
from exitflow.encoders.fusion import FusionOutput, FusionTransformerConfig
from exitflow.encoders.fusion_stems import STEM_MODALITIES as MODALITIES
from exitflow.encoders.fusion_stems import FusionSystem
from exitflow.encoders.fusion_training import curriculum_target, fusion_objective, layer_averaged_loss
from exitflow.pipeline.artifacts import NUM_CLASSES, checkpoint_dir
from exitflow.pipeline.checkpoints import load_weights, read_meta, save_checkpoint
from exitflow.pipeline.config import Config, FusionConfig
from exitflow.pipeline.data.avmnist import AVSplit, load_split
from exitflow.pipeline.data.batches import batch_rows
from exitflow.pipeline.data.grid_commands import DIGIT_SLOT, SLOTS
from exitflow.pipeline.errors import CheckpointError, DataError

PAD, BOS, EOS = 0, 1, 2
WORDS = tuple(w for slot in SLOTS for w in slot)
WORD_ID = {w: i + 3 for i, w in enumerate(WORDS)}
VOCAB_SIZE = len(WORDS) + 3
MUE_QUANTILES = (0.9, 0.7, 0.5, 0.3, 0.1)


def encode_words(texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GRID commands -> (B, length) word ids (PAD after the end) and (B, length) validity mask."""
    ids = torch.full((len(texts), length), PAD, dtype=torch.long)
    for i, text in enumerate(texts):
        words = [WORD_ID[w] for w in text.split()][:length]
        ids[i, : len(words)] = torch.tensor(words, dtype=torch.long)
    return ids, (ids != PAD).float()


def stem_inputs(split: AVSplit, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The raw inputs :class:`PatchStems` embeds, for ``rows`` of ``split``: image, spectrogram, word ids."""
    if split.text is None:
        raise DataError(f"{split.dataset} has no text modality; fusion trains on avmnist-t")
    image = torch.from_numpy(np.ascontiguousarray(split.image[rows]))  # (B, 1, 28, 28)
    audio = torch.from_numpy(split.audio[rows])  # (B, 1, 112, 112)
    ids, _ = encode_words([split.text[i] for i in rows.tolist()], 6)  # (B, 6)
    return image, audio, ids


def stem_tokens(system: FusionSystem, split: AVSplit, rows: np.ndarray) -> tuple[dict, dict]:
    return system.stems(*stem_inputs(split, rows))


def build_system(fc: FusionConfig) -> FusionSystem:
    """The stems + fusion (+ decoder) that ``fusion`` config describes."""
    fusion = FusionTransformerConfig(
        modality_dims={m: fc.dim for m in MODALITIES}, num_classes=NUM_CLASSES, dim=fc.dim, num_layers=fc.layers,
        num_heads=fc.heads, ffn_mult=fc.ffn_mult, trim_tokens=fc.trim, trim_heads=fc.trim,
        token_score_mode=fc.token_score_mode, head_mask_mode=fc.head_mask_mode, gumbel_tau=fc.gumbel_tau,
    )
    decoder = (
        DecoderConfig(VOCAB_SIZE, fc.dim, fc.decoder_layers, fc.heads, fc.ffn_mult, 7, BOS) if fc.task == "command" else None
    )
    return FusionSystem(fusion, decoder, vocab_size=VOCAB_SIZE, pad_id=PAD)


def memory_of(out: FusionOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder memory: all modalities' final fused tokens, (B, M, D) and (B, M)."""
    names = sorted(out.hidden)
    return torch.cat([out.hidden[m] for m in names], dim=1), torch.cat([out.keep[m] for m in names], dim=1)


def command_targets(split: AVSplit, rows: np.ndarray) -> torch.Tensor:
    """(B, 7) true command word ids followed by EOS."""
    if split.command is None:
        raise DataError(f"{split.dataset} has no commands; the command task needs avmnist-t")
    ids, _ = encode_words([split.command[i] for i in rows.tolist()], 6)
    return torch.cat([ids, torch.full((len(rows), 1), EOS)], dim=1)


@dataclass
class FusionRunResult:
    folder: Path
    metrics: dict[str, Any]


def _train_step(
    system: FusionSystem, fc: FusionConfig, split: AVSplit, rows: np.ndarray, progress: float
) -> float:
    tokens, masks = stem_tokens(system, split, rows)
    labels = torch.from_numpy(split.labels[rows])
    token_t = curriculum_target(progress, fc.token_target, fc.ramp_fraction) if fc.trim else 1.0
    head_t = curriculum_target(progress, fc.head_target, fc.ramp_fraction) if fc.trim else 1.0
    system.fusion.set_head_target(head_t)
    trimmed = system.fusion(tokens, masks, trim=fc.trim, hard=False, all_layer_logits=True)
    full = None
    if fc.trim and fc.lambda_sd > 0:
        full = system.fusion(tokens, masks, trim=False, hard=False, all_layer_logits=True)
    parts = fusion_objective(trimmed, full, labels, token_t, head_t, fc.lambda_sd, fc.lambda_cost)
    total = parts.total
    if system.decoder is not None:
        target = command_targets(split, rows)  # (B, 7)
        inputs = torch.cat([torch.full((len(rows), 1), BOS), target[:, :-1]], dim=1)  # (B, 7)
        memory, keep = memory_of(trimmed)
        total = total + layer_averaged_loss(system.decoder(inputs, memory, keep), target)
    total.backward()
    return float(total.detach())


@torch.no_grad()
def evaluate(
    system: FusionSystem, fc: FusionConfig, split: AVSplit, limit: int | None, batch_size: int = 250
) -> dict:
    """Accuracy, fusion MACs and kept ratios (hard masks), untrimmed accuracy, MuE sweep, decoder.

    The MuE sweep sets each modality's threshold at quantiles of the similarities that
    modality's stream showed (layers 1..L-1) in a pass without exits, plus the configured
    ``exit_thresholds`` when given.
    """
    system.eval()
    n = min(len(split), limit) if limit else len(split)
    labels = torch.from_numpy(split.labels[:n])
    batches = list(batch_rows(n, batch_size))
    stats: dict[str, Any] = {"samples": n}
    start = time.perf_counter()
    runs: dict[str, list[FusionOutput]] = {"full": [], "trimmed": []}
    dec_rows: list[dict] = []
    for rows in batches:
        tokens, masks = stem_tokens(system, split, rows)
        runs["full"].append(
            _light(system.fusion(tokens, masks, trim=False, hard=True, all_layer_logits=False))
        )
        out = system.fusion(tokens, masks, trim=fc.trim, hard=True, all_layer_logits=False)
        if system.decoder is not None:
            dec_rows.append(_decode_batch(system, fc, split, rows, out))
        runs["trimmed"].append(_light(out))
    sims = {m: torch.cat([o.similarity[m][:, :-1] for o in runs["trimmed"]]).flatten() for m in MODALITIES}
    settings = {
        f"mue_q{q}": {m: float(torch.nanquantile(v, q)) for m, v in sims.items()} for q in MUE_QUANTILES
    }
    if fc.exit_thresholds:
        settings["mue_config"] = dict(fc.exit_thresholds)
    stats["mue_thresholds"] = settings
    for name, thresholds in settings.items():
        runs[name] = []
        for rows in batches:
            tokens, masks = stem_tokens(system, split, rows)
            out = system.fusion(
                tokens, masks, thresholds=thresholds, trim=fc.trim, hard=True, all_layer_logits=False
            )
            runs[name].append(_light(out))
    stats["eval_s"] = time.perf_counter() - start
    for name, outs in runs.items():
        pred = torch.cat([o.logits.argmax(-1) for o in outs])
        layers = {m: torch.cat([o.exit_layers[m] for o in outs]) for m in MODALITIES}
        stats[name] = {
            "accuracy": float((pred == labels).float().mean()),
            "fusion_macs_mean": float(torch.cat([o.macs for o in outs]).float().mean()),
            "kept_token_ratio": float(torch.cat([o.kept_token_ratio for o in outs]).mean()),
            "kept_head_ratio": float(torch.cat([o.kept_head_ratio for o in outs]).mean()),
            "fusion_layers_mean": {m: float(v.float().mean()) for m, v in layers.items()},
            "fusion_layer_hist": {
                m: torch.bincount(v, minlength=fc.layers + 1).tolist()[1:] for m, v in layers.items()
            },
        }
    if dec_rows:
        stats["decoder"] = {k: _merge_decoder([d[k] for d in dec_rows]) for k in dec_rows[0]}
    return stats


def _light(out: FusionOutput) -> FusionOutput:
    """Drop the token states of an output that is only kept for its statistics."""
    out.hidden, out.keep, out.token_ratios, out.head_ratios = {}, {}, [], []
    return out


def _decode_batch(
    system: FusionSystem, fc: FusionConfig, split: AVSplit, rows: np.ndarray, out: FusionOutput
) -> dict:
    if system.decoder is None:
        raise ValueError("decoding needs a FusionSystem built with fusion.task=command")
    target = command_targets(split, rows)[:, :6]  # (B, 6) words without EOS
    memory, keep = memory_of(out)
    result = {}
    for theta in (None, fc.decoder_theta, 0.95, 0.8):
        dec = system.decoder.generate(
            memory, keep, theta, fc.decoder_beta, fc.decoder_tau, fc.decoder_warmup_fraction
        )
        correct = (dec.tokens[:, :6] == target).float()  # (B, 6)
        result[f"theta={theta}"] = {
            "token_correct": correct.sum().item(),
            "digit_correct": correct[:, DIGIT_SLOT].sum().item(),
            "layers_per_step_sum": dec.layers[:, :6].float().sum(0).tolist(),
            "macs_sum": dec.macs.float().sum().item(),
            "n": len(rows),
        }
    return result


def _merge_decoder(parts: list[dict]) -> dict:
    n = sum(p["n"] for p in parts)
    per_step = np.sum([p["layers_per_step_sum"] for p in parts], axis=0) / n
    return {
        "token_accuracy": sum(p["token_correct"] for p in parts) / (6 * n),
        "digit_accuracy": sum(p["digit_correct"] for p in parts) / n,
        "layers_per_step": [round(float(v), 3) for v in per_step],
        "mean_layers": float(per_step.mean()),
        "decoder_macs_mean": sum(p["macs_sum"] for p in parts) / n,
    }


def train_fusion_stems(cfg: Config, name: str, progress: bool = True) -> FusionRunResult:
    """Train on avmnist-t train, select on val accuracy (hard masks), evaluate on test, save."""
    fc, t = cfg.fusion, cfg.train
    torch.set_num_threads(t.num_threads or 1)
    torch.manual_seed(t.seed)
    train, val, test = (load_split(cfg, s, "avmnist-t", progress) for s in ("train", "val", "test"))
    system = build_system(fc)
    opt = torch.optim.AdamW(system.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    n_train = min(len(train), t.limit) if t.limit else len(train)
    steps_total = t.epochs * -(-n_train // t.batch_size)
    step, best, best_state, history = 0, -1.0, None, []
    start = time.perf_counter()
    for epoch in range(t.epochs):
        system.train()
        losses = []
        for rows in batch_rows(n_train, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch):
            opt.zero_grad()
            losses.append(_train_step(system, fc, train, rows, step / max(steps_total, 1)))
            opt.step()
            step += 1
        val_stats = evaluate_quick(system, val, fc.eval_limit)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **val_stats})
        if progress:
            print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f} val {val_stats}", flush=True)
        ramp_done = not fc.trim or step / max(steps_total, 1) >= fc.ramp_fraction
        if ramp_done and val_stats["val_accuracy"] >= best:  # select only once the kept-ratio target holds
            best, best_state = val_stats["val_accuracy"], copy.deepcopy(system.state_dict())
    train_s = time.perf_counter() - start
    if best_state is not None:
        system.load_state_dict(best_state)
    metrics = {"train_s": train_s, "history": history, "test": evaluate(system, fc, test, fc.eval_limit)}
    folder = checkpoint_dir(f"fusion-{name}", t.checkpoint_dir)
    meta = {"kind": "fusion", "name": name, "fusion": asdict(fc), "train": asdict(t), "metrics": metrics}
    card = _card(name, fc, metrics, n_train)
    save_checkpoint(folder, system, meta, card)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return FusionRunResult(folder, metrics)


@torch.no_grad()
def evaluate_quick(system: FusionSystem, split: AVSplit, limit: int | None) -> dict:
    """Validation accuracy with hard masks, no exits (model selection)."""
    system.eval()
    n = min(len(split), limit) if limit else len(split)
    correct, macs = 0, 0.0
    for rows in batch_rows(n, 250):
        tokens, masks = stem_tokens(system, split, rows)
        out = system.fusion(tokens, masks, hard=True, all_layer_logits=False)
        correct += int((out.logits.argmax(-1) == torch.from_numpy(split.labels[rows])).sum())
        macs += float(out.macs.float().sum())
    return {"val_accuracy": correct / n, "val_fusion_macs": macs / n}


def _card(name: str, fc: FusionConfig, metrics: dict, n_train: int) -> str:
    test = metrics["test"]
    lines = [
        f"# fusion-{name}",
        "",
        "Adaptive fusion (co-attention + MuE exits + SmartTrim) on avmnist-t over patch-stem tokens",
        "(constructed GRID-grammar text over real MNIST images and FSDD audio).",
        "",
        f"Trained on {n_train} samples; config: {json.dumps(asdict(fc))}",
        "",
        "| setting | accuracy | fusion MACs | kept tokens | kept heads |",
        "|---|---|---|---|---|",
    ]
    for key, row in test.items():
        if isinstance(row, dict) and "accuracy" in row:
            lines.append(
                f"| {key} | {row['accuracy']:.4f} | {row['fusion_macs_mean']:.0f} | "
                f"{row['kept_token_ratio']:.3f} | {row['kept_head_ratio']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def load_fusion_stems(folder: str | Path) -> FusionSystem:
    """Rebuild a trained :class:`FusionSystem` from ``checkpoints/fusion-NAME`` (eval mode)."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("kind") != "fusion":
        raise CheckpointError(f"{folder} holds a {meta.get('kind')!r} checkpoint, not a fusion one")
    fc = FusionConfig(**{k: v for k, v in meta["fusion"].items()})
    system = build_system(fc)
    load_weights(folder, system)
    system.fusion.configure_inference(dict(fc.exit_thresholds))
    return system.eval()


@torch.no_grad()
def latency_benchmark(
    system: FusionSystem, split: AVSplit, samples: int = 200, thresholds: dict | None = None
) -> dict:
    """Batch-of-one fusion latency_ms (median) untrimmed vs trimmed (vs trimmed + MuE), interleaved.

    The stems run outside the timed region; each sample runs every setting back to back so
    that load from other processes hits all settings alike.
    """
    system.eval()
    settings: dict[str, dict[str, Any]] = {
        "full": {"trim": False},
        "trimmed": {"trim": True},
    }
    if thresholds:
        settings["trimmed+mue"] = {"trim": True, "thresholds": thresholds}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for i in range(min(samples, len(split))):
        tokens, masks = stem_tokens(system, split, np.array([i]))
        for name, kwargs in settings.items():
            start = time.perf_counter_ns()
            system.fusion(tokens, masks, hard=True, all_layer_logits=False, **kwargs)
            times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {
        name: {"latency_ms_median": float(np.median(v)), "latency_ms_mean": float(np.mean(v))}
        for name, v in times.items()
    }
