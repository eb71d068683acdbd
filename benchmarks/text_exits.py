"""What text's exits add on avmnist-t (issue 25 item 5): each exit, and the fusion exit with and without text.

Runs every exit of the image and audio ViTs and of the text MiniLM over the first N rows of ``val`` and
``test`` (batched, eager), keeps each exit's logits and embedding, and prints, per split:

1. each exit alone: accuracy and MACs per sample (text at each row's real token count);
2. the late fusion exit (``checkpoints/fusion_late_avmnist-t``) over fixed exits (a static truncation:
   each backbone to its exit plus that head only, + the fusion head): image *i* + audio *j*, alone or with
   text's embedding exit (0.2 M MACs) or its last exit;
3. the cheapest truncation reaching an accuracy, with and without text's cheap exit (the Pareto front);
4. fused-check walks (chosen on ``val``, measured on ``test``): audio's exits in depth order, after each a
   fused check over what ran, answered when its normalized entropy is at most tau; the walk ends with
   image's last exit and the fusion of all. The same walk with text's embedding exit run first and fused
   into every check is the "text prefix" policy.

5. (``--engine``) the real :class:`~pipeline.inference.engine.Engine` on both splits, today's policy against
   :class:`~scheduler.prior.PriorPolicy` (text's embedding exit first, weighing every audio/image exit), at
   the profile's thresholds and a few others.

MACs only (no timings)::

    nice -n 19 python benchmarks/text_exits.py --limit 1000 [--records runs/text_exits.npz] [--engine]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import torch

from exitflow.encoders.text import TextEarlyExitEncoder
from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.data.batches import batch_rows, modality_batch
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.engine import Engine, settings_from_config
from exitflow.pipeline.inference.loading import load_encoders, load_fusion
from exitflow.pipeline.inference.pricing import truncated_macs
from exitflow.scheduler.policy import Policy
from exitflow.scheduler.prior import PriorPolicy

DATASET = "avmnist-t"
TAUS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def collect(cfg, encoders, split_name: str, limit: int) -> dict[str, np.ndarray]:
    """Per modality: logits (E, N, C), embeddings (E, N, D), cumulative and truncated MACs per row (E, N)."""
    split = load_split(cfg, split_name, DATASET, progress=False).head(limit)
    n = len(split)
    out: dict[str, np.ndarray] = {"labels": np.asarray(split.labels)}
    with torch.inference_mode():
        for m, enc in encoders.items():
            logits, embeds = [], []
            for rows in batch_rows(n, 125):
                outs = enc(modality_batch(split, [m], rows)[m])
                logits.append(np.stack([o.logits.float().numpy() for o in outs]))  # (E, B, C)
                embeds.append(np.stack([o.embedding.float().numpy() for o in outs]))  # (E, B, D)
            out[f"{m}_logits"], out[f"{m}_emb"] = np.concatenate(logits, 1), np.concatenate(embeds, 1)
            if isinstance(enc, TextEarlyExitEncoder):
                counts = enc.token_counts(list(split.text or []))
                cum = np.array([enc.exit_macs(c) for c in counts], dtype=np.float64).T  # (E, N)
                trunc = np.array([[truncated_macs(enc, k, c) for k in range(enc.num_exits)] for c in counts]).T
                out["text_tokens"] = np.asarray(counts)
            else:
                cum = np.repeat(np.asarray(enc.exit_macs(), dtype=np.float64)[:, None], n, 1)
                trunc = np.repeat(np.array([truncated_macs(enc, k) for k in range(enc.num_exits)], dtype=np.float64)
                                  [:, None], n, 1)
            out[f"{m}_cum"], out[f"{m}_trunc"] = cum, trunc.astype(np.float64)
    return out


def entropy(logits: np.ndarray) -> np.ndarray:
    """Normalized entropy H / log C per row of (N, C) logits."""
    p = torch.softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
    return -(p * np.log(np.clip(p, 1e-12, 1))).sum(-1) / np.log(p.shape[-1])


class Fuser:
    """The late fusion over chosen exits' embeddings, memoized per exit combination."""

    def __init__(self, fusion, rec: dict[str, np.ndarray]):
        self.fusion, self.rec, self.cache = fusion, rec, {}

    def logits(self, exits: dict[str, int]) -> np.ndarray:
        key = tuple(sorted(exits.items()))
        if key not in self.cache:
            emb = {m: torch.from_numpy(self.rec[f"{m}_emb"][k]) for m, k in exits.items()}
            with torch.inference_mode():
                self.cache[key] = self.fusion(emb, list(exits)).numpy()  # (N, C)
        return self.cache[key]

    def accuracy(self, exits: dict[str, int]) -> float:
        return float((self.logits(exits).argmax(1) == self.rec["labels"]).mean())


def walk(fz: Fuser, tau: float, text: bool, n_audio: int, n_image: int, n_text: int) -> tuple[float, float, float]:
    """The fused-check walk of the module docstring: (accuracy, mean MACs, share answered with text)."""
    rec, labels = fz.rec, fz.rec["labels"]
    n = labels.shape[0]
    done = np.zeros(n, bool)
    pred = np.zeros(n, int)
    macs = np.zeros(n)
    if text:
        macs += rec["text_cum"][0]  # the embedding exit (its head pools the token embeddings)
    ctx = {"text": 0} if text else {}
    for j in range(n_audio):
        exits = {**ctx, "audio": j}
        fused = fz.logits(exits)
        take = ~done & (entropy(fused) <= tau)
        macs[~done] += rec["audio_cum"][j][~done] - (rec["audio_cum"][j - 1][~done] if j else 0) + fz.fusion.macs
        pred[take], done[take] = fused[take].argmax(1), True
    rest = ~done
    final = fz.logits({**ctx, "audio": n_audio - 1, "image": n_image - 1})
    pred[rest] = final[rest].argmax(1)
    macs[rest] += rec["image_trunc"][n_image - 1][rest] + fz.fusion.macs
    answered_early = float(done.mean())
    return float((pred == labels).mean()), float(macs.mean()), answered_early


def report(fz: Fuser, name: str, sizes: dict[str, int]) -> None:
    rec, labels = fz.rec, fz.rec["labels"]
    print(f"\n== {name}: {labels.shape[0]} rows; text tokens mean {rec['text_tokens'].mean():.2f} "
          f"(min {rec['text_tokens'].min()}, max {rec['text_tokens'].max()}) ==")
    print("1. each exit alone: accuracy / MACs per sample (cumulative, every head up to it)")
    for m, e in sizes.items():
        print(f"  {m}: " + ", ".join(f"{k}: {(rec[f'{m}_logits'][k].argmax(1) == labels).mean():.4f} / "
                                     f"{rec[f'{m}_cum'][k].mean() / 1e6:.2f} M" for k in range(e)))
    print(f"2. late fusion over fixed exits (static truncation MACs incl. fusion {fz.fusion.macs:,} MACs)")
    rows = []
    for i, j in itertools.product([None, *range(sizes["image"])], range(sizes["audio"])):
        for t in (None, 0, sizes["text"] - 1):
            exits = {"audio": j, **({"image": i} if i is not None else {}), **({"text": t} if t is not None else {})}
            macs = sum(rec[f"{m}_trunc"][k].mean() for m, k in exits.items()) + fz.fusion.macs
            rows.append((exits, fz.accuracy(exits), macs))
    print("  image \\ audio exit j: accuracy without text | + text0 | + text last")
    for i in [None, *range(sizes["image"])]:
        cells = []
        for j in range(sizes["audio"]):
            acc = [r[1] for r in rows if r[0].get("image") == i and r[0]["audio"] == j]
            cells.append("/".join(f"{a:.3f}" for a in acc))
        print(f"  image {'-' if i is None else i}: " + "  ".join(cells))
    print("  MACs (M) of the same cells, without text (+0.20 M with text0, see 1. for text last)")
    for i in [None, *range(sizes["image"])]:
        print(f"  image {'-' if i is None else i}: " + "  ".join(
            f"{r[2] / 1e6:.2f}" for r in rows if r[0].get("image") == i and "text" not in r[0]))
    print("3. cheapest static truncation at or above an accuracy (fused): without text | with text0")
    for target in (0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99):
        best = []
        for with_text in (False, True):
            ok = [r for r in rows if (r[0].get("text") == 0) == with_text and r[0].get("text", 0) == 0
                  and r[1] >= target]
            b = min(ok, key=lambda r: r[2], default=None)
            best.append("-" if b is None else f"{b[1]:.4f} / {b[2] / 1e6:.2f} M {b[0]}")
        print(f"  >= {target}: {best[0]} | {best[1]}")


def engine_runs(cfg, limit: int, taus: tuple[float | None, ...] = (None, 0.15, 0.2, 0.3)) -> None:
    """Section 5: today's policy and the text prior on the real engine, batch 1, at each threshold."""
    parts = AdaptiveParts(cfg, DATASET)
    print(f"\n5. the engine, first {limit} rows, exit rule {parts.profile.exit_rule}; profile thresholds "
          f"{parts.profile.thresholds}: accuracy / MACs (M) / answered by an exit / text run / accuracy on "
          "ok, dropped, replaced commands")
    data = {s: load_split(cfg, s, DATASET, progress=False) for s in ("val", "test")}
    splits = {s: list(split_samples(d, limit)) for s, d in data.items()}
    for tau in taus:
        sched = cfg.scheduler if tau is None else dataclasses.replace(cfg.scheduler, threshold=tau, thresholds={})
        settings = settings_from_config(parts.profile, sched)
        for name, policy in (("today", Policy(parts.profile, settings)), ("text prior", PriorPolicy(parts.profile, settings))):
            engine = Engine(parts.encoders, parts.fusion, policy, input_adapter=parts.input_adapter)
            cells = []
            for s, samples in splits.items():
                ds = [engine.process(x) for x in samples]
                right = np.array([d.prediction == d.label for d in ds])
                status = np.asarray(data[s].text_status)[: len(ds)]  # 0 ok, 1 dropped, 2 replaced
                cells.append(f"{s} {right.mean():.4f} / {np.mean([d.macs for d in ds]) / 1e6:.2f} M / "
                             f"{np.mean([d.exited_by != 'fusion' for d in ds]):.3f} / "
                             f"{np.mean(['text' in d.exits for d in ds]):.3f} / "
                             + ", ".join(f"{right[status == k].mean():.3f}" for k in range(3)))
            print(f"  {name:10s} tau {'profile' if tau is None else tau}: " + " | ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--records", type=Path, default=None, help="npz cache of the exits (written if absent)")
    ap.add_argument("--engine", action="store_true", help="also section 5 (the real engine, both policies)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.root={args.data_root}"])
    encoders, fusion = load_encoders(cfg, DATASET), load_fusion(cfg, DATASET).eval()
    sizes = {m: e.num_exits for m, e in encoders.items()}
    recs = {}
    for split in ("val", "test"):
        path = args.records.with_name(f"{args.records.stem}_{split}.npz") if args.records else None
        if path is not None and path.is_file():
            recs[split] = dict(np.load(path))
        else:
            recs[split] = collect(cfg, encoders, split, args.limit)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, **recs[split])
    fusers = {s: Fuser(fusion, r) for s, r in recs.items()}
    for s in ("val", "test"):
        report(fusers[s], s, sizes)
    print("\n4. fused-check walk, tau chosen on val: accuracy / MACs (M) / answered by a check")
    for text in (False, True):
        for tau in TAUS:
            got = {s: walk(fusers[s], tau, text, sizes["audio"], sizes["image"], sizes["text"]) for s in recs}
            print(f"  {'text0 + ' if text else ''}audio checks, tau {tau}: " + " | ".join(
                f"{s} {a:.4f} / {m / 1e6:.2f} M / {e:.3f}" for s, (a, m, e) in got.items()))
    if args.engine:
        engine_runs(cfg, args.limit)


if __name__ == "__main__":
    main()
