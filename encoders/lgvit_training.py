"""LGViT's two-stage training for the ViT encoders, and head training for the text encoder.

Stage 1 trains the backbone and the final classifier end to end with cross-entropy (optionally
adding the internal exits' losses: ``weighted`` sums them with weights growing with depth,
``alternating`` switches between the final loss and all exits' losses every step). Stage 2
freezes the backbone and the final classifier and trains only the internal heads with
:class:`encoders.lgvit_losses.LGViTDistillation`. Runs are seeded and resumable: after every
epoch the model, optimizer, scheduler and history go to ``run_dir/stage{1,2}.pt``. Those files
are read with ``torch.load(weights_only=True)`` (tensors and plain containers only, never
arbitrary objects); a damaged, foreign or non-finite one raises :class:`ResumeStateError`.

The text encoder keeps its pretrained backbone frozen: exit-layer features are computed once
(pooled per exit), then the final head is trained with cross-entropy (stage 1) and the
internal heads with prediction distillation from it (stage 2).
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from tqdm.auto import tqdm

from exitflow.encoders.checkpoint import CheckpointLoadError
from exitflow.encoders.heads import TextExitHead
from exitflow.encoders.lgvit_losses import LGViTDistillation, kd_loss
from exitflow.encoders.text import TextEarlyExitEncoder
from exitflow.encoders.vit import ViTEarlyExitEncoder

BatchFn = Callable[[np.ndarray], Any]
RESUME_KEYS = frozenset({"model", "optimizer", "scheduler", "epoch", "history"})


class ResumeStateError(CheckpointLoadError):
    """A resume file in the run folder is damaged, foreign or does not fit this run."""


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of both stages (the CLI fills these from the config)."""

    stage1_epochs: int = 3
    stage2_epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    stage2_lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    stage1_exit_loss: str = "none"
    kd_gamma: float = 0.3
    kd_temperature: float = 2.0
    het_weight: float = 0.01
    hom_weight: float = 0.01
    pred_exits: str = "all"
    num_threads: int = 2
    progress: bool = True


@dataclass
class LabeledData:
    """A split as ``batch(indices) -> model input`` plus its (N,) int64 labels."""

    batch: BatchFn
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _cosine_lambda(total_steps: int, warmup: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def _save(path: Path, **state: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load(path: Path | None) -> dict[str, Any] | None:
    """A resume file written by :func:`_save`, loaded without running code from it; None if absent."""
    if path is None or not path.is_file():
        return None
    fix = f"delete {path} (or train with --fresh) to start this stage over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign, or holding objects other than tensors and containers
        reason = " ".join(str(e).split())[:160]
        raise ResumeStateError(f"{path}: not a resume file that can be read safely ({reason}); {fix}") from e
    if not isinstance(state, dict) or not RESUME_KEYS <= state.keys() or not isinstance(state["model"], dict):
        found = [str(k)[:20] for k in list(state)[:6]] if isinstance(state, dict) else type(state).__name__
        raise ResumeStateError(f"{path}: not a resume file of this trainer (found {found}); {fix}")
    if not isinstance(state["epoch"], int) or not isinstance(state["history"], dict):
        raise ResumeStateError(f"{path}: epoch or history has the wrong type; {fix}")
    for name, tensor in state["model"].items():
        if not isinstance(tensor, torch.Tensor) or (
            tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        ):
            raise ResumeStateError(f"{path}: model tensor {name} is not a finite tensor; {fix}")
    return state


def _resume_error(path: Path, error: Exception) -> ResumeStateError:
    reason = " ".join(str(error).split())[:160]
    return ResumeStateError(
        f"{path}: saved state does not fit this run ({reason}); delete it (or train with --fresh) to start over"
    )


@torch.no_grad()
def vit_exit_accuracy(encoder: ViTEarlyExitEncoder, data: LabeledData, batch_size: int = 512) -> list[float]:
    """Per-exit accuracy of a ViT encoder on ``data`` (all exits evaluated)."""
    encoder.eval()
    correct = np.zeros(encoder.num_exits)
    for lo in range(0, len(data), batch_size):
        idx = np.arange(lo, min(lo + batch_size, len(data)))
        y = torch.from_numpy(data.labels[idx])
        for out in encoder(data.batch(idx)):
            correct[out.exit_index] += float((out.logits.argmax(-1) == y).sum())
    return (correct / len(data)).tolist()


def _stage1_loss(
    encoder: ViTEarlyExitEncoder, x: torch.Tensor, y: torch.Tensor, mode: str, step: int
) -> torch.Tensor:
    states = encoder.exit_states(x)
    final = encoder.head_forward(encoder.num_exits - 1, states[-1])
    loss = F.cross_entropy(final.logits, y)
    if mode == "none" or (mode == "alternating" and step % 2 == 0):
        return loss
    weights = [(i + 1) / encoder.num_exits for i in range(encoder.num_exits - 1)]
    for i, w in enumerate(weights):
        loss = loss + w * F.cross_entropy(encoder.head_forward(i, states[i]).logits, y)
    return loss


def train_vit(
    encoder: ViTEarlyExitEncoder,
    train: LabeledData,
    val: LabeledData,
    settings: TrainSettings,
    run_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Two-stage LGViT training of ``encoder`` in place; returns the history (per-epoch losses,
    per-exit validation accuracy after each stage, seconds per stage)."""
    if settings.stage1_exit_loss not in ("none", "weighted", "alternating"):
        raise ValueError(
            f"stage1_exit_loss must be none, weighted or alternating, got {settings.stage1_exit_loss!r}"
        )
    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    seed_everything(settings.seed)
    run = Path(run_dir) if run_dir is not None else None
    history: dict[str, Any] = {"settings": asdict(settings), "stage1": [], "stage2": []}
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)

    # ---- stage 1: backbone + final classifier (+ exits if asked) end to end ----
    train_heads = settings.stage1_exit_loss != "none"
    params = [p for n, p in encoder.named_parameters() if train_heads or not n.startswith("heads.")]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    total = max(1, settings.stage1_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_lambda(total, max(1, total // 20)))
    start_epoch = 0
    saved = _load(run / "stage1.pt" if run else None)
    if saved is not None and run is not None:
        try:
            missing, _ = encoder.load_state_dict(saved["model"], strict=False)
            if any(not k.startswith("heads.") for k in missing):
                raise ValueError(f"missing backbone tensors {missing[:5]}")
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise _resume_error(run / "stage1.pt", e) from e
        start_epoch, history = saved["epoch"] + 1, saved["history"]
        log(f"resumed stage 1 after epoch {saved['epoch'] + 1} from {run}")
    t0 = time.perf_counter()
    for epoch in range(start_epoch, settings.stage1_epochs):
        encoder.train()
        order = _epoch_order(len(train), settings.seed, epoch)
        losses = []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"stage1 {epoch + 1}/{settings.stage1_epochs}",
            disable=not settings.progress,
            leave=False,
        )
        for step in bar:
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            y = torch.from_numpy(train.labels[idx])
            loss = _stage1_loss(encoder, train.batch(idx), y, settings.stage1_exit_loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        history["stage1"].append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        log(f"stage 1 epoch {epoch + 1}: loss {np.mean(losses):.4f}")
        if run:
            state = {
                k: v for k, v in encoder.state_dict().items() if train_heads or not k.startswith("heads.")
            }
            _save(
                run / "stage1.pt",
                model=state,
                optimizer=opt.state_dict(),
                scheduler=sched.state_dict(),
                epoch=epoch,
                history=history,
            )
    history["stage1_seconds"] = history.get("stage1_seconds", 0.0) + time.perf_counter() - t0
    history["val_after_stage1"] = vit_exit_accuracy(encoder, val)
    log(f"val per-exit accuracy after stage 1: {[round(a, 4) for a in history['val_after_stage1']]}")
    if settings.stage2_epochs == 0:
        return history

    # ---- stage 2: backbone and final classifier frozen, heads distilled ----
    for name, p in encoder.named_parameters():
        p.requires_grad_(name.startswith("heads."))
    cfg = encoder.config
    probe = torch.zeros(1, 1 + cfg.grid[0] * cfg.grid[1], cfg.hidden_size)
    encoder.eval()
    with torch.no_grad():
        tokens = [int(h(probe).feature.shape[1]) for h in encoder.heads]
    distill = LGViTDistillation(
        encoder.head_kinds,
        tokens,
        cfg.hidden_size,
        cfg.grid,
        settings.kd_gamma,
        settings.kd_temperature,
        settings.het_weight,
        settings.hom_weight,
        settings.pred_exits,
    )
    params2 = [*encoder.heads.parameters(), *distill.parameters()]
    opt2 = torch.optim.AdamW(params2, lr=settings.stage2_lr, weight_decay=settings.weight_decay)
    total2 = max(1, settings.stage2_epochs * steps_per_epoch)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, _cosine_lambda(total2, max(1, total2 // 20)))
    start2 = 0
    saved2 = _load(run / "stage2.pt" if run else None)
    if saved2 is not None and run is not None:
        try:
            encoder.load_state_dict(saved2["model"])
            distill.load_state_dict(saved2["distill"])
            opt2.load_state_dict(saved2["optimizer"])
            sched2.load_state_dict(saved2["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise _resume_error(run / "stage2.pt", e) from e
        start2, history = saved2["epoch"] + 1, saved2["history"]
        log(f"resumed stage 2 after epoch {saved2['epoch'] + 1} from {run}")
    t0 = time.perf_counter()
    for epoch in range(start2, settings.stage2_epochs):
        encoder.eval()
        encoder.heads.train()
        distill.train()
        order = _epoch_order(len(train), settings.seed + 1000, epoch)
        losses, parts_sum = [], {"pred": 0.0, "het": 0.0, "hom": 0.0}
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"stage2 {epoch + 1}/{settings.stage2_epochs}",
            disable=not settings.progress,
            leave=False,
        )
        for step in bar:
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            y = torch.from_numpy(train.labels[idx])
            with torch.no_grad():
                states = encoder.exit_states(train.batch(idx))
                final = encoder.head_forward(encoder.num_exits - 1, states[-1])
            outs = [encoder.head_forward(i, states[i]) for i in range(encoder.num_exits - 1)]
            loss, parts = distill(
                [o.logits for o in outs], [o.feature for o in outs], final.logits, final.feature, y
            )
            opt2.zero_grad(set_to_none=True)
            loss.backward()
            opt2.step()
            sched2.step()
            losses.append(float(loss.detach()))
            for k, v in parts.items():
                parts_sum[k] += v
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        n = max(1, len(losses))
        history["stage2"].append(
            {"epoch": epoch + 1, "loss": float(np.mean(losses)), **{k: v / n for k, v in parts_sum.items()}}
        )
        log(
            f"stage 2 epoch {epoch + 1}: loss {np.mean(losses):.4f} "
            + " ".join(f"{k} {v / n:.4f}" for k, v in parts_sum.items())
        )
        if run:
            _save(
                run / "stage2.pt",
                model=encoder.state_dict(),
                distill=distill.state_dict(),
                optimizer=opt2.state_dict(),
                scheduler=sched2.state_dict(),
                epoch=epoch,
                history=history,
            )
    history["stage2_seconds"] = history.get("stage2_seconds", 0.0) + time.perf_counter() - t0
    for p in encoder.parameters():
        p.requires_grad_(True)
    history["val_after_stage2"] = vit_exit_accuracy(encoder, val)
    log(f"val per-exit accuracy after stage 2: {[round(a, 4) for a in history['val_after_stage2']]}")
    return history


# ---------------------------------------------------------------- text: frozen backbone, heads only
@torch.no_grad()
def pooled_exit_features(
    encoder: TextEarlyExitEncoder, texts: Sequence[str], batch_size: int = 256, progress: bool = True
) -> torch.Tensor:
    """Pooled feature of every exit for every text, (N, E, D), computing each distinct text once."""
    encoder.eval()
    unique = sorted(set(texts))
    where = {t: i for i, t in enumerate(unique)}
    chunks = []
    for lo in tqdm(
        range(0, len(unique), batch_size), desc="text features", disable=not progress, leave=False
    ):
        states, mask = encoder.exit_states(unique[lo : lo + batch_size])
        heads = [cast(TextExitHead, head) for head in encoder.heads]
        chunks.append(torch.stack([heads[e].pool(h, mask) for e, h in enumerate(states)], dim=1))
    feats = torch.cat(chunks)  # (U, E, D)
    return feats[torch.tensor([where[t] for t in texts])]


def _train_text_heads(
    heads: Sequence[nn.Module],
    feats: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    settings: TrainSettings,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    desc: str,
) -> list[float]:
    params = [p for h in heads for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.stage2_lr, weight_decay=settings.weight_decay)
    steps = math.ceil(feats.shape[0] / settings.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_lambda(max(1, epochs * steps), max(1, steps // 2)))
    history = []
    for epoch in tqdm(range(epochs), desc=desc, disable=not settings.progress, leave=False):
        order = torch.from_numpy(_epoch_order(feats.shape[0], settings.seed, epoch))
        losses = []
        for step in range(steps):
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            loss = loss_fn(feats[idx], labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    return history


def train_text(
    encoder: TextEarlyExitEncoder,
    train_texts: Sequence[str],
    train_labels: np.ndarray,
    val_texts: Sequence[str],
    val_labels: np.ndarray,
    settings: TrainSettings,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the text exit heads on a frozen backbone: final head by CE, then the others by KD."""
    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    seed_everything(settings.seed)
    for p in encoder.backbone.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    feats = pooled_exit_features(encoder, train_texts, progress=settings.progress)  # (N, E, D)
    val_feats = pooled_exit_features(encoder, val_texts, progress=settings.progress)
    y, val_y = torch.from_numpy(np.asarray(train_labels)), torch.from_numpy(np.asarray(val_labels))
    heads = [cast(TextExitHead, h) for h in encoder.heads]
    last = len(heads) - 1
    for h in heads:
        h.train()
    hist1 = _train_text_heads(
        [heads[last]],
        feats[:, last],
        y,
        settings.stage1_epochs,
        settings,
        lambda f, t: F.cross_entropy(heads[last].mlp(f), t),
        "text stage1",
    )

    with torch.no_grad():
        teacher_all = heads[last].mlp(feats[:, last])  # (N, C)

    rows_all = torch.cat([feats.flatten(1), teacher_all], dim=1)  # (N, E*D + C): features and teacher
    dim = feats.shape[2]

    def stage2(rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f = rows[:, : (last + 1) * dim].reshape(rows.shape[0], last + 1, dim)  # (B, E, D)
        teacher = rows[:, (last + 1) * dim :]
        losses = [
            kd_loss(heads[e].mlp(f[:, e]), teacher, target, settings.kd_gamma, settings.kd_temperature)
            for e in range(last)
        ]
        return functools.reduce(operator.add, losses, teacher.new_zeros(()))  # 0 + l0 + l1 ..., as sum()

    hist2 = _train_text_heads(
        heads[:last], rows_all, y, settings.stage2_epochs, settings, stage2, "text stage2"
    )
    for h in heads:
        h.eval()
    with torch.no_grad():
        val_acc = [
            float((heads[e].mlp(val_feats[:, e]).argmax(-1) == val_y).float().mean()) for e in range(last + 1)
        ]
    log(f"text val per-exit accuracy: {[round(a, 4) for a in val_acc]}")
    return {
        "settings": asdict(settings),
        "stage1": hist1,
        "stage2": hist2,
        "val_after_stage2": val_acc,
        "seconds": time.perf_counter() - t0,
    }
