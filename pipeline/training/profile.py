"""The adaptive multimodal model: trained early-exit encoders + a fusion exit, and its profiling.

- ``load_encoders`` rebuilds the committed encoder checkpoints for a data set's modalities.
- ``collect_exits`` runs every exit of every encoder over a split (batched) and keeps the
  per-exit logits and the final-exit embeddings.
- ``train_fusion`` trains the fusion exit (:class:`pipeline.engine.MaskedLateFusion`) on the
  frozen encoders' final embeddings with a random subset of modalities per batch, so the
  fusion works over whatever the scheduler computed.
- ``make_profile`` measures every exit's accuracy a, exit probability p and cost c (MACs from
  the flop counter, mJ from the configured power meter) on the validation split.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from exitflow.encoders.base import EarlyExitEncoder
from exitflow.encoders.checkpoint import load_encoder
from exitflow.encoders.macs import count_macs
from exitflow.pipeline.checkpoints import checkpoint_dir, load_weights, read_meta, save_checkpoint
from exitflow.pipeline.config import Config
from exitflow.pipeline.data.avmnist import AVSplit, load_split
from exitflow.pipeline.data.batches import batch_rows, modality_batch
from exitflow.pipeline.errors import CheckpointError
from exitflow.pipeline.inference.engine import MaskedLateFusion, default_input_adapter
from exitflow.scheduler.profile import (
    ExitArrays,
    Profile,
    build_profile,
    fingerprint_checkpoints,
    load_profile,
)
from exitflow.scheduler.rules import scores_from_probs
from tqdm import tqdm

DATASET_MODALITIES = {"avmnist": ("image", "audio"), "avmnist-t": ("image", "audio", "text")}
ENCODER_CHECKPOINTS = {"image": "vision_avmnist", "audio": "audio_avmnist", "text": "text_avmnist-t"}
NUM_CLASSES = 10


def encoder_folder(cfg: Config, modality: str) -> Path:
    return checkpoint_dir(ENCODER_CHECKPOINTS[modality], cfg.train.checkpoint_dir)


def fusion_folder(cfg: Config, dataset: str) -> Path:
    return checkpoint_dir(f"fusion_late_{dataset}", cfg.train.checkpoint_dir)


def joint_folder(cfg: Config, dataset: str) -> Path:
    return checkpoint_dir(f"joint_{dataset}", cfg.train.checkpoint_dir)


def use_joint(cfg: Config, dataset: str) -> bool:
    """Whether the jointly fine-tuned set is used: ``joint.use``, it exists, and the fusion exit is late."""
    return (
        cfg.joint.use and cfg.fusion.exit == "late"
        and (joint_folder(cfg, dataset) / "fusion" / "config.json").is_file()
    )


def profile_path(cfg: Config, dataset: str) -> Path:
    """The exit profile of the systems ``cfg`` loads (one per fusion exit kind: the weights differ)."""
    suffix = ""
    if cfg.fusion.exit == "transformer":  # its accuracy and MACs depend on how it runs, so the name says
        suffix = "_transformer" if cfg.fusion.trim_at_inference else "_transformer_untrimmed"
    return checkpoint_dir(f"profile_{dataset}{suffix}.json", cfg.train.checkpoint_dir)


def load_encoders(cfg: Config, dataset: str, prefer_joint: bool = True) -> dict[str, EarlyExitEncoder]:
    """The trained encoder of each modality of ``dataset`` (eval mode); the joint set if in use."""
    joint = prefer_joint and use_joint(cfg, dataset)
    encoders = {}
    for m in DATASET_MODALITIES[dataset]:
        folder = joint_folder(cfg, dataset) / m if joint else encoder_folder(cfg, m)
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"no {m} encoder checkpoint at {folder}; train it with "
                f"`exitflow train encoder --modality {'vision' if m == 'image' else m}`"
            )
        try:
            encoders[m] = load_encoder(folder).eval()
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    return encoders


def weight_files(cfg: Config, dataset: str, with_fusion: bool = True, prefer_joint: bool = True) -> list[Path]:
    """The weight files the adaptive systems load (their fingerprint keys the exit profile)."""
    if prefer_joint and use_joint(cfg, dataset):
        base = joint_folder(cfg, dataset)
        files = [base / m / "model.safetensors" for m in DATASET_MODALITIES[dataset]]
        return files + ([base / "fusion" / "model.safetensors"] if with_fusion else [])
    files = [encoder_folder(cfg, m) / "model.safetensors" for m in DATASET_MODALITIES[dataset]]
    if cfg.fusion.exit == "transformer":
        from exitflow.pipeline.training.transformer_exit import transformer_folder

        return files + ([transformer_folder(cfg, dataset) / "model.safetensors"] if with_fusion else [])
    return files + ([fusion_folder(cfg, dataset) / "model.safetensors"] if with_fusion else [])


@dataclass
class ExitRecords:
    """Every exit of one modality over a split."""

    logits: np.ndarray  # (E, N, C)
    final_embedding: np.ndarray  # (N, D)


@torch.no_grad()
def collect_exits(
    encoders: dict[str, EarlyExitEncoder], split: AVSplit, limit: int | None = None, batch_size: int = 256,
    progress: bool = True,
) -> dict[str, ExitRecords]:
    n = len(split) if limit is None else min(limit, len(split))
    out = {}
    for m, enc in encoders.items():
        logits, embeds = [], []
        for rows in tqdm(list(batch_rows(n, batch_size)), desc=f"exits {m}", disable=not progress, leave=False):
            outs = enc(modality_batch(split, [m], rows)[m])
            logits.append(np.stack([o.logits.float().numpy() for o in outs]))  # (E, B, C)
            embeds.append(outs[-1].embedding.float().numpy())  # (B, D)
        out[m] = ExitRecords(np.concatenate(logits, axis=1), np.concatenate(embeds))
    return out


def subsets(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty subset, in a fixed order (singletons first)."""
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def _fusion_logits(fusion: MaskedLateFusion, records: dict[str, ExitRecords], present: tuple[str, ...], rows) -> torch.Tensor:
    emb = {m: torch.from_numpy(records[m].final_embedding[rows]) for m in present}
    return fusion(emb, list(present))


def fusion_accuracy(fusion: MaskedLateFusion, records: dict[str, ExitRecords], labels: np.ndarray) -> dict[str, float]:
    """Accuracy of the fusion exit for every modality subset (key: ``image+audio``)."""
    fusion.eval()
    rows = np.arange(labels.shape[0])
    with torch.no_grad():
        return {
            "+".join(s): float((_fusion_logits(fusion, records, s, rows).argmax(1).numpy() == labels).mean())
            for s in subsets(tuple(records))
        }


def fusion_macs(fusion: MaskedLateFusion, dims: dict[str, int]) -> int:
    emb = {m: torch.zeros(1, d) for m, d in dims.items()}
    return count_macs(fusion, emb, list(dims))


def train_fusion(cfg: Config, dataset: str, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train the fusion exit on frozen encoders; saves ``checkpoints/fusion_late_<dataset>``."""
    t = cfg.train
    torch.manual_seed(t.seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    encoders = load_encoders(cfg, dataset, prefer_joint=False)
    train, val, test = (load_split(cfg, s, dataset, progress) for s in ("train", "val", "test"))
    rec_train = collect_exits(encoders, train, t.limit, progress=progress)
    rec_val = collect_exits(encoders, val, progress=progress)
    rec_test = collect_exits(encoders, test, progress=progress)
    dims = {m: int(r.final_embedding.shape[1]) for m, r in rec_train.items()}
    fusion = MaskedLateFusion(dims, NUM_CLASSES, hidden_dim=64)
    opt = torch.optim.Adam(fusion.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    n = rec_train[next(iter(dims))].final_embedding.shape[0]
    labels = train.labels[:n]
    choices = subsets(tuple(dims))
    rng = np.random.default_rng(t.seed)
    epochs = max(t.epochs, 10)  # embeddings are precomputed: epochs are cheap
    for epoch in range(epochs):
        fusion.train()
        for rows in batch_rows(n, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch):
            # the full set half of the time (what the scheduler fuses most), else a random subset
            present = choices[-1] if rng.random() < 0.5 else choices[rng.integers(len(choices))]
            loss = torch.nn.functional.cross_entropy(
                _fusion_logits(fusion, rec_train, present, rows), torch.from_numpy(labels[rows])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    val_acc = fusion_accuracy(fusion, rec_val, val.labels)
    test_acc = fusion_accuracy(fusion, rec_test, test.labels)
    macs = fusion_macs(fusion, dims)
    meta = {
        "kind": "fusion_late", "dataset": dataset, "dims": dims, "hidden_dim": 64, "num_classes": NUM_CLASSES,
        "val_accuracy": val_acc, "test_accuracy": test_acc, "macs_per_sample": macs, "train_samples": int(n),
        "encoders": fingerprint_checkpoints(weight_files(cfg, dataset, with_fusion=False, prefer_joint=False)),
        "seed": t.seed,
    }
    rows_md = "\n".join(f"| {k} | {val_acc[k]:.4f} | {test_acc[k]:.4f} |" for k in val_acc)
    card = f"""# Fusion exit on {dataset}

Masked late fusion (`pipeline/engine.py: MaskedLateFusion`): per-modality final-exit embeddings of the
frozen early-exit encoders ({', '.join(f'{m}: {d}' for m, d in dims.items())} dims), a learned placeholder for each
modality not computed, concatenation, MLP (hidden 64). Trained with a random modality subset per batch
(the full set half of the time), {epochs} epochs over {n} training samples, Adam lr {t.lr}, seed {t.seed}.

Command: `{command or f'exitflow train joint --dataset {dataset}'}`

| modalities fused | val accuracy | test accuracy |
|---|---|---|
{rows_md}

Fusion MACs per sample: {macs:,} (flop counter). Encoders fingerprint: `{meta['encoders'][:16]}`.
"""
    save_checkpoint(fusion_folder(cfg, dataset), fusion, meta, card)
    return meta


def read_fusion_meta(
    cfg: Config, dataset: str, folder: Path, kind: str, retrain: str, prefer_joint: bool = False
) -> tuple[dict[str, Any], dict[str, int]]:
    """A fusion checkpoint's metadata and its modality widths, checked against ``kind``, the encoders
    it was trained on (``retrain`` is the command named when they differ) and the data set's modalities.

    The widths come back in the data set's modality order (JSON metadata is key-sorted).
    """
    meta = read_meta(folder)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{folder} holds a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
    expected = fingerprint_checkpoints(weight_files(cfg, dataset, with_fusion=False, prefer_joint=prefer_joint))
    if meta.get("encoders") != expected:
        raise CheckpointError(f"{folder} was trained on other encoder weights; retrain it with `{retrain}`")
    dims = {m: int(meta["dims"][m]) for m in DATASET_MODALITIES[dataset] if m in meta["dims"]}
    if len(dims) != len(meta["dims"]):
        raise CheckpointError(f"{folder}: fusion modalities {sorted(meta['dims'])} do not fit data set {dataset}")
    return meta, dims


def load_fusion_exit(cfg: Config, dataset: str, prefer_joint: bool = True) -> MaskedLateFusion:
    joint = prefer_joint and use_joint(cfg, dataset)
    folder = joint_folder(cfg, dataset) / "fusion" if joint else fusion_folder(cfg, dataset)
    meta, dims = read_fusion_meta(
        cfg, dataset, folder, "fusion_late", f"exitflow train joint --dataset {dataset}", prefer_joint=joint
    )
    fusion = MaskedLateFusion(dims, meta["num_classes"], hidden_dim=meta["hidden_dim"])
    load_weights(folder, fusion)
    fusion.macs = int(meta["macs_per_sample"])
    return fusion.eval()


def load_fusion(cfg: Config, dataset: str) -> Any:
    """The fusion exit ``fusion.exit`` selects: the late (concat) fusion or the transformer."""
    if cfg.fusion.exit == "transformer":
        from exitflow.pipeline.training.transformer_exit import load_transformer_exit

        return load_transformer_exit(cfg, dataset)
    return load_fusion_exit(cfg, dataset)


def _fuse_batch(fusion: Any, outs: dict[str, Any], subset: tuple[str, ...]) -> torch.Tensor:
    """Logits of ``fusion`` over the ExitOutputs of ``subset`` (either fusion protocol)."""
    if hasattr(fusion, "fuse_exits"):
        return fusion.fuse_exits({m: outs[m] for m in subset}).logits
    return fusion({m: outs[m].embedding for m in subset}, list(subset))


def fusion_entries(
    cfg: Config, fusion: Any, encoders: dict[str, EarlyExitEncoder], split: AVSplit,
    records: dict[str, ExitRecords], fusion_mj: dict, progress: bool = True,
) -> dict[tuple[str, ...], tuple[np.ndarray, float, float]]:
    """Per modality subset: (correct per sample, MACs per sample, mJ per sample) of the fusion exit."""
    labels = split.labels
    if hasattr(fusion, "fuse_exits"):
        from exitflow.pipeline.training.transformer_exit import collect_tokens, run_records

        with_embedding = fusion.config.exit_embedding_token
        tokens = collect_tokens(encoders, split, progress=progress, with_embedding=with_embedding)
        out = {}
        for sub in subsets(tuple(records)):
            res = run_records(fusion, tokens, sub, trim=fusion.trim_at_inference, thresholds=fusion.exit_thresholds)
            out[sub] = (res["correct"], float(res["macs"].mean()), fusion_mj[sub])
        return out
    rows = np.arange(labels.shape[0])
    with torch.no_grad():
        return {
            sub: ((_fusion_logits(fusion, records, sub, rows).argmax(1).numpy() == labels), float(fusion.macs),
                  fusion_mj[sub])
            for sub in subsets(tuple(records))
        }


def _step_energy(encoders, fusion, split: AVSplit, meter, n: int) -> tuple[dict[str, np.ndarray], dict, str, bool]:
    """Mean energy (mJ) of each encoder step and of fusion per subset, at batch 1 over ``n`` samples."""
    per_step = {m: np.zeros(enc.num_exits) for m, enc in encoders.items()}
    sources, estimated = set(), False
    with torch.inference_mode():
        for i in range(n):
            outs = {}
            for m, enc in encoders.items():
                payload = split.text[i] if m == "text" else (split.image[i] if m == "image" else split.audio[i])
                state = enc.start(default_input_adapter(m, payload))
                for j in range(enc.num_exits):
                    meter.begin_window("step")
                    outs[m] = enc.step(state)
                    res = meter.end_window("step")
                    per_step[m][j] += (res.energy_mj or 0.0) / n
                    sources.add(res.source)
                    estimated |= bool(res.estimated)
        fusion_mj = {}
        for s in subsets(tuple(encoders)):
            meter.begin_window("fusion")
            for _ in range(n):
                _fuse_batch(fusion, outs, s)
            fusion_mj[s] = (meter.end_window("fusion").energy_mj or 0.0) / n
    return per_step, fusion_mj, "+".join(sorted(sources)), estimated


def make_profile(cfg: Config, dataset: str, meter, energy_samples: int = 100, progress: bool = True) -> Profile:
    """Profile every exit on the val split at the configured thresholds; saved beside the checkpoints."""
    s = cfg.scheduler
    encoders = load_encoders(cfg, dataset)
    fusion = load_fusion(cfg, dataset)
    val = load_split(cfg, "val", dataset, progress)
    records = collect_exits(encoders, val, progress=progress)
    labels = val.labels
    per_step, fusion_mj, source, estimated = _step_energy(encoders, fusion, val, meter, energy_samples)
    per_exit = {}
    for m, rec in records.items():
        probs = torch.softmax(torch.from_numpy(rec.logits), dim=-1).numpy().transpose(1, 0, 2)  # (N, E, C)
        scores = scores_from_probs(s.exit_rule, probs)  # (N, E)
        correct = (rec.logits.argmax(-1) == labels[None]).T  # (N, E)
        per_exit[m] = ExitArrays(
            scores=scores,
            correct=correct,
            macs_cumulative=np.asarray(encoders[m].exit_macs(), dtype=np.float64),
            energy_mj_step=np.broadcast_to(per_step[m], correct.shape).copy(),
            layers=tuple(encoders[m].exit_layers),
        )
    fusion_rows = fusion_entries(cfg, fusion, encoders, val, records, fusion_mj, progress)
    thresholds = {m: s.thresholds.get(m, s.threshold if s.threshold is not None else DEFAULT_THRESHOLD[s.exit_rule])
                  for m in records}
    profile = build_profile(
        per_exit, thresholds, exit_rule=s.exit_rule, fusion=fusion_rows,
        fingerprint=fingerprint_checkpoints(weight_files(cfg, dataset)), energy_source=source,
        energy_estimated=estimated, device=cfg.engine.device,
    )
    profile.save(profile_path(cfg, dataset))
    return profile


DEFAULT_THRESHOLD = {"entropy": 0.2, "max_prob": 0.9, "patience": 2.0, "none": 0.0}


def load_dataset_profile(cfg: Config, dataset: str) -> Profile:
    path = Path(cfg.scheduler.profile) if cfg.scheduler.profile else profile_path(cfg, dataset)
    if not path.is_file():
        raise CheckpointError(f"no exit profile at {path}; build it with `exitflow profile --dataset {dataset}`")
    return load_profile(path, fingerprint_checkpoints(weight_files(cfg, dataset)))


def profile_summary(profile: Profile) -> str:
    lines = [f"exit rule {profile.exit_rule}, thresholds {json.dumps(profile.thresholds)}, "
             f"energy {profile.energy_source} (estimated={profile.energy_estimated})"]
    for m, exits in profile.exits.items():
        for e in exits:
            mj = f"{e.energy_mj:.3f} mJ" if e.energy_mj is not None else "-"
            lines.append(f"  {m}/{e.exit_index} layer {e.layer}: a={e.accuracy:.4f} p={e.exit_prob:.3f} "
                         f"macs={e.macs:,.0f} {mj}")
    for f in profile.fusion:
        lines.append(f"  fusion {'+'.join(f.modalities)}: a={f.accuracy:.4f} macs={f.macs:,.0f}")
    return "\n".join(lines)
