"""The cross-modal transformer as exitflow's fusion exit, trained on the early-exit encoders' tokens.

``fusion.exit: transformer`` makes :class:`encoders.fusion.FusionTransformer` the engine's fusion
exit in place of the concatenation (:class:`pipeline.engine.MaskedLateFusion`). It reads the token
states each encoder produced at the layer where it stopped (``ExitOutput.hidden`` and its
``attention_mask``) for whichever modalities ran, with SmartTrim trimming and MuE exits inside.

- ``collect_tokens`` runs the frozen encoders over a split and keeps their final-exit token
  states (float16): the scheduler fuses only after every planned modality ran out of exits, so
  the fusion exit sees final-layer tokens of a subset of the modalities.
- ``train_transformer_exit`` trains the fusion on those tokens with a random modality subset per
  batch (the full set half of the time), MuE's layer-averaged loss and, with ``fusion.trim``,
  SmartTrim's curriculum, cost loss and self-distillation; it picks MuE thresholds on val and
  saves ``checkpoints/fusion_transformer_<dataset>`` with a model card.
- ``load_transformer_exit`` rebuilds it, refusing weights trained on other encoders.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from exitflow.encoders.fusion import FusionTransformer
from exitflow.encoders.fusion_training import curriculum_target, fusion_objective
from exitflow.pipeline.artifacts import NUM_CLASSES, modalities_of, transformer_folder, weight_files
from exitflow.pipeline.checkpoints import save_checkpoint
from exitflow.pipeline.config import Config, FusionConfig
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.batches import batch_rows
from exitflow.pipeline.inference.loading import build_transformer, load_encoders
from exitflow.pipeline.training.records import TokenRecords, collect_tokens, run_records, subsets
from exitflow.scheduler.profile import fingerprint_checkpoints

MUE_QUANTILES = (0.9, 0.7, 0.5, 0.3, 0.1)
MUE_TOLERANCE = 0.005  # MuE thresholds: fewest fusion layers within this much val accuracy of no exits












def summary(result: dict[str, Any], num_layers: int) -> dict[str, Any]:
    layers = result["exit_layers"]
    return {
        "accuracy": float(result["correct"].mean()),
        "fusion_macs_mean": float(result["macs"].mean()),
        "kept_token_ratio": result["kept_token_ratio"],
        "kept_head_ratio": result["kept_head_ratio"],
        "mean_fusion_layers": {m: float(v.mean()) for m, v in layers.items()},
        "exit_layer_counts": {
            m: [int((v == k).sum()) for k in range(1, num_layers + 1)] for m, v in layers.items()
        },
    }


def mue_sweep(
    fusion: FusionTransformer, val: TokenRecords, test: TokenRecords, modalities: tuple[str, ...]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Thresholds at quantiles of each stream's layer-to-layer similarity (val, no exits).

    Returns the chosen thresholds (fewest mean fusion layers within :data:`MUE_TOLERANCE` of the
    no-exit val accuracy; empty when none qualifies) and the sweep rows (val and test).
    """
    num_layers = fusion.config.num_layers
    base_val = run_records(fusion, val, modalities)
    base = summary(base_val, num_layers)
    rows = [{"setting": "no exits", "thresholds": {}, "val": base,
             "test": summary(run_records(fusion, test, modalities), num_layers)}]
    chosen: dict[str, float] = {}
    best_layers = float(np.mean(list(base["mean_fusion_layers"].values())))
    for q in MUE_QUANTILES:
        thresholds = {}
        for m in modalities:
            sim = base_val["similarity"].get(m)
            if sim is None or sim.shape[1] < 2:
                continue
            values = sim[:, : num_layers - 1].ravel()  # a stream can only stop after layers 1..L-1
            values = values[np.isfinite(values)]
            if values.size:
                thresholds[m] = float(np.quantile(values, q))
        v = summary(run_records(fusion, val, modalities, thresholds=thresholds), num_layers)
        t = summary(run_records(fusion, test, modalities, thresholds=thresholds), num_layers)
        rows.append({"setting": f"mue_q{q}", "thresholds": thresholds, "val": v, "test": t})
        mean_layers = float(np.mean(list(v["mean_fusion_layers"].values())))
        if v["accuracy"] >= base["accuracy"] - MUE_TOLERANCE and mean_layers < best_layers:
            chosen, best_layers = thresholds, mean_layers
    return chosen, rows


def _train_epoch(
    fusion: FusionTransformer, fc: FusionConfig, records: TokenRecords, opt: torch.optim.Optimizer,
    rng: np.random.Generator, batch_size: int, seed: int, epoch: int, step: int, steps_total: int,
) -> tuple[float, int]:
    choices = subsets(fusion.modalities)
    fusion.train()
    losses = []
    for rows in batch_rows(len(records), batch_size, shuffle=True, seed=seed, epoch=epoch):
        present = choices[-1] if rng.random() < 0.5 else choices[int(rng.integers(len(choices)))]
        tokens, masks = records.batch(rows, present)
        labels = torch.from_numpy(records.labels[rows])
        progress = step / max(steps_total, 1)
        token_t = curriculum_target(progress, fc.token_target, fc.ramp_fraction) if fc.trim else 1.0
        head_t = curriculum_target(progress, fc.head_target, fc.ramp_fraction) if fc.trim else 1.0
        fusion.set_head_target(head_t)
        trimmed = fusion(tokens, masks, trim=fc.trim, hard=False, all_layer_logits=True)
        full = None
        if fc.trim and fc.lambda_sd > 0:
            full = fusion(tokens, masks, trim=False, hard=False, all_layer_logits=True)
        parts = fusion_objective(trimmed, full, labels, token_t, head_t, fc.lambda_sd, fc.lambda_cost)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
        losses.append(float(parts.total.detach()))
        step += 1
    return float(np.mean(losses)), step


def train_transformer_exit(
    cfg: Config, dataset: str, progress: bool = True, command: str | None = None
) -> dict[str, Any]:
    """Train the transformer fusion exit on the frozen encoders' tokens; returns its metadata."""
    fc, t = cfg.fusion, cfg.train
    torch.manual_seed(t.seed)
    torch.set_num_threads(t.num_threads or 1)
    encoders = load_encoders(cfg, dataset, prefer_joint=False)
    modalities = modalities_of(dataset)
    train, val, test = (load_split(cfg, s, dataset, progress) for s in ("train", "val", "test"))
    rec_train = collect_tokens(encoders, train, t.limit, progress=progress)
    rec_val = collect_tokens(encoders, val, fc.eval_limit, progress=progress)
    rec_test = collect_tokens(encoders, test, fc.eval_limit, progress=progress)
    dims = {m: int(rec_train.hidden[m].shape[-1]) for m in modalities}
    fusion = build_transformer(fc, dims)
    opt = torch.optim.AdamW(fusion.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps_total = t.epochs * -(-len(rec_train) // t.batch_size)
    rng = np.random.default_rng(t.seed)
    step, best, best_state, history = 0, -1.0, None, []
    start = time.perf_counter()
    for epoch in range(t.epochs):
        loss, step = _train_epoch(fusion, fc, rec_train, opt, rng, t.batch_size, t.seed, epoch, step, steps_total)
        val_acc = float(run_records(fusion, rec_val, modalities)["correct"].mean())
        history.append({"epoch": epoch + 1, "loss": loss, "val_accuracy": val_acc})
        if progress:
            print(f"epoch {epoch + 1}: loss {loss:.4f} val accuracy {val_acc:.4f}", flush=True)
        ramp_done = not fc.trim or step / max(steps_total, 1) >= fc.ramp_fraction
        if ramp_done and val_acc >= best:  # select only once the kept-ratio target holds
            best, best_state = val_acc, copy.deepcopy(fusion.state_dict())
    train_s = time.perf_counter() - start
    if best_state is not None:
        fusion.load_state_dict(best_state)
    fusion.eval()
    layers = fc.layers
    per_subset = {}
    for sub in subsets(modalities):
        v = summary(run_records(fusion, rec_val, sub), layers)
        te = summary(run_records(fusion, rec_test, sub), layers)
        per_subset["+".join(sub)] = {"val": v, "test": te}
    untrimmed = summary(run_records(fusion, rec_test, modalities, trim=False), layers) if fc.trim else None
    thresholds, sweep = mue_sweep(fusion, rec_val, rec_test, modalities)
    meta = {
        "kind": "fusion_transformer", "dataset": dataset, "dims": dims, "num_classes": NUM_CLASSES,
        "fusion": asdict(replace(fc, exit_thresholds=thresholds)), "exit_thresholds": thresholds,
        "subsets": per_subset, "untrimmed_test": untrimmed, "mue_sweep": sweep, "history": history,
        "train_samples": len(rec_train), "eval_samples": {"val": len(rec_val), "test": len(rec_test)},
        "train_s": train_s, "seed": t.seed, "command": command,
        "encoders": fingerprint_checkpoints(weight_files(cfg, dataset, with_fusion=False, prefer_joint=False)),
    }
    meta["macs_per_sample"] = per_subset["+".join(modalities)]["val"]["fusion_macs_mean"]
    save_checkpoint(transformer_folder(cfg, dataset), fusion, meta, _card(meta, fc, t))
    return meta




def _card(meta: dict[str, Any], fc: FusionConfig, t: Any) -> str:
    rows = "\n".join(
        f"| {k} | {v['val']['accuracy']:.4f} | {v['test']['accuracy']:.4f} | {v['test']['fusion_macs_mean']:,.0f} | "
        f"{v['test']['kept_token_ratio']:.3f} | {v['test']['kept_head_ratio']:.3f} |"
        for k, v in meta["subsets"].items()
    )
    sweep = "\n".join(
        f"| {r['setting']} | {r['val']['accuracy']:.4f} | {r['test']['accuracy']:.4f} | "
        f"{r['test']['fusion_macs_mean']:,.0f} | "
        + " / ".join(f"{x:.2f}" for x in r["test"]["mean_fusion_layers"].values()) + " |"
        for r in meta["mue_sweep"]
    )
    untrimmed = meta["untrimmed_test"]
    untrimmed_line = (
        f"Same weights with the trimmers off (test, all modalities): accuracy {untrimmed['accuracy']:.4f}, "
        f"{untrimmed['fusion_macs_mean']:,.0f} fusion MACs per sample."
        if untrimmed else "Trained without trimmers (`fusion.trim: false`)."
    )
    return f"""# Transformer fusion exit on {meta['dataset']}

Co-attention fusion transformer (`encoders/fusion.py`) over the final-exit token states of the frozen
early-exit encoders ({', '.join(f'{m}: {d}' for m, d in meta['dims'].items())} dims), D = {fc.dim},
{fc.layers} layers, {fc.heads} heads, SmartTrim {'on' if fc.trim else 'off'} (targets {fc.token_target} tokens /
{fc.head_target} heads), MuE exits. Trained on {meta['train_samples']} {meta['dataset']} training samples for
{t.epochs} epochs (AdamW lr {t.lr}, batch {t.batch_size}, seed {t.seed}) with a random modality subset per batch
(the full set half of the time); {meta['train_s']:.0f} s on CPU. Evaluated on the first
{meta['eval_samples']['val']} val / {meta['eval_samples']['test']} test samples, hard masks.

Command: `{meta['command'] or 'exitflow train fusion --inputs encoders'}`

| modalities fused | val accuracy | test accuracy | fusion MACs (test mean) | kept tokens | kept heads |
|---|---|---|---|---|---|
{rows}

{untrimmed_line}

MuE thresholds (quantiles of each stream's layer-to-layer cosine on val; chosen: fewest layers within
{MUE_TOLERANCE * 100:.1f} points of no exits on val): `{meta['exit_thresholds']}`

| setting | val accuracy | test accuracy | fusion MACs (test) | mean fusion layers per stream |
|---|---|---|---|---|
{sweep}

Encoders fingerprint: `{meta['encoders'][:16]}`.
"""
