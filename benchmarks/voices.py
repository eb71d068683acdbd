"""The five-voice protocol (issue 25 item 1): how exitflow holds on voices nobody calibrated on.

Fold *k* over the five FSDD voices of ``../shared/data/fsdd`` (george, jackson, lucas, nicolas, theo,
sorted): tests on voice *k*, calibrates on voice *k+1* (mod 5), trains on the other three. Each fold gets
its own data root (symlinks to the shared data plus ``fsdd/speaker_roles.json``), its own data cache and
its own checkpoints under ``.cache/voices/`` (outside git); models that are there are reused.

Per fold and data set it
1. trains what is missing (``exitflow train cnn``, ``exitflow train baseline --name lf --augment``; one
   process at a time, one thread each, niced) and calibrates (``exitflow calibrate``, val = voice k+1);
2. compares calibration criteria on the calibration voice's and the test voice's per-exit logits (no model
   runs per threshold): today's no-regret rule and Learn-then-Test risk control of disagreement with the
   full path (``pipeline.training.calibrate.risk_controlled_shift``) at a few alphas;
3. benches ``full``, ``lf``, ``static`` (MACs matched to ``exitflow-fixed``), ``exitflow-fixed`` (the
   calibrated thresholds) and ``exitflow`` (online self-recalibration on, shadow cost included) on the first
   ``--limit`` test rows: accuracy, MACs, ms, mJ (the configured meter; psutil here, an estimate).

Results append to ``.cache/voices/results.jsonl`` (one line per fold, data set and seed; a finished one is
skipped on a rerun) and the table prints per voice and as mean +- sd over the folds that ran::

    nice -n 19 python benchmarks/voices.py --folds theo george --datasets avmnist --limit 2000
    python benchmarks/voices.py --report            # the table from the results file only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from exitflow.devices import get_power_meter
from exitflow.encoders.baseline import measure_macs
from exitflow.encoders.fusion_grid import subset_key
from exitflow.encoders.last_rung import mix_logits
from exitflow.pipeline.artifacts import baseline_dataset
from exitflow.pipeline.config import Config, load_config
from exitflow.pipeline.data.avmnist import load_split
from exitflow.pipeline.evaluation.bench import run_system, static_exits_matching
from exitflow.pipeline.evaluation.replay import split_samples
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.loading import load_baseline, load_encoders, load_fusion
from exitflow.pipeline.inference.shadow import bench_systems, shadow_columns
from exitflow.pipeline.inference.systems import baseline_system
from exitflow.pipeline.training.calibrate import (
    WalkSimulator,
    calibrate_family,
    risk_controlled_shift,
    rung_logits,
    split_logits,
)

VOICES = ("george", "jackson", "lucas", "nicolas", "theo")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cache" / "voices"
SYSTEMS = ("full", "cnn-full", "lf", "exitflow-fixed", "static", "exitflow")  # static matches exitflow-fixed's MACs
ALPHAS = (0.005, 0.01, 0.02)


def fold_roles(test: str, offset: int = 1) -> dict[str, list[str]]:
    k = VOICES.index(test)
    val = VOICES[(k + offset) % len(VOICES)]
    return {"train": [v for v in VOICES if v not in (test, val)], "val": [val], "test": [test]}


def fold_root(test: str) -> Path:
    """The fold's data root: the shared data by symlink, with the fold's speaker roles."""
    root = WORK / "roots" / test
    (root / "fsdd").mkdir(parents=True, exist_ok=True)
    for name in ("mnist", "grid_av_samples", "ljspeech_subset", "coco_captions_mini"):
        if not (root / name).exists():
            os.symlink(SHARED / name, root / name)
    for name in ("fsdd_train.npz", "fsdd_test.npz"):
        if not (root / "fsdd" / name).exists():
            os.symlink(SHARED / "fsdd" / name, root / "fsdd" / name)
    (root / "fsdd" / "speaker_roles.json").write_text(json.dumps(fold_roles(test)))
    return root


def fold_overrides(test: str, seed: int) -> list[str]:
    suffix = "" if seed == 0 else f"-seed{seed}"
    return [f"data.root={fold_root(test)}", f"data.cache_dir={WORK / 'cache' / test}", "train.num_threads=1",
            f"train.checkpoint_dir={WORK / 'ckpt' / (test + suffix)}", "engine.num_threads=1", "train.epochs=3"]


def _exitflow(overrides: list[str], *argv: str) -> float:
    """Run ``exitflow ARGV`` niced on one thread; returns its wall time in seconds."""
    cmd = ["nice", "-n", "19", str(Path(sys.executable).parent / "exitflow")]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([*cmd, *argv], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def training_jobs(test: str, dataset: str, seed: int) -> list[tuple[str, list[str], list[str]]]:
    """The trainings a fold still lacks, as (name, overrides, argv) for :func:`_exitflow`."""
    overrides = fold_overrides(test, seed)
    base = Path(load_config(None, overrides).train.checkpoint_dir)
    jobs = []
    if not (base / f"cnn_{dataset}" / "fusion" / "model.safetensors").is_file():
        jobs.append((f"{test} {dataset} s{seed} cnn", overrides,
                     ["train", "cnn", "--dataset", dataset, "--seed", str(seed)]))
    if not (base / f"baseline_lf_{dataset}" / "model.safetensors").is_file():
        jobs.append((f"{test} {dataset} s{seed} lf", [*overrides, f"train.seed={seed}"],
                     ["train", "baseline", "--name", "lf", "--dataset", dataset, "--augment"]))
    return jobs


def train_all(folds: list[str], datasets: list[str], seeds: list[int], jobs: int) -> None:
    """Train every missing fold model, ``jobs`` processes at once (one thread each: what ran fastest here)."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [job for d in datasets for t in folds for s in seeds for job in training_jobs(t, d, s)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_exitflow, o, *argv): name for name, o, argv in todo}
        for future, name in futures.items():
            print(f"trained {name} in {future.result():.0f} s", flush=True)


def ensure_models(cfg: Config, overrides: list[str], dataset: str, seed: int) -> dict[str, float]:
    """Train what the fold lacks; returns the seconds each training took (absent: reused)."""
    base = Path(cfg.train.checkpoint_dir)
    took = {}
    if not (base / f"cnn_{dataset}" / "fusion" / "model.safetensors").is_file():
        took["train_cnn_s"] = _exitflow(overrides, "train", "cnn", "--dataset", dataset, "--seed", str(seed))
    if not (base / f"baseline_lf_{dataset}" / "model.safetensors").is_file():
        took["train_lf_s"] = _exitflow([*overrides, f"train.seed={seed}"], "train", "baseline", "--name", "lf",
                                       "--dataset", dataset, "--augment")
    return took


def criteria(cfg: Config, dataset: str, report: dict[str, Any], limit: int) -> dict[str, Any]:
    """Calibration criteria chosen on the calibration voice, measured on the test voice (simulated walk, with
    the last rung calibration chose, if any: its weight from the calibration voice)."""
    encoders, fusion = load_encoders(cfg, dataset), load_fusion(cfg, dataset)
    exit_macs = {m: [float(v) for v in e.exit_macs()] for m, e in encoders.items()}
    rung = report.get("rung")
    model = load_baseline(cfg, rung["model"], baseline_dataset(dataset, rung["model"])) if rung else None
    final = subset_key({m: e.num_exits - 1 for m, e in encoders.items()}, list(fusion.modalities))
    sims, agree = {}, {}
    for split in ("val", "test"):
        data = load_split(cfg, split, dataset, progress=False).head(limit)
        logits, labels = split_logits(encoders, fusion, data)
        extra = None if model is None else (mix_logits(logits[final], rung_logits(model, data), rung["weight"]),
                                            float(measure_macs(model)))
        sims[split] = WalkSimulator(logits, labels, report["order"], exit_macs, fusion.head_macs,
                                    cfg.scheduler.exit_rule, fusion.modalities, rung=extra)
        agree[split] = WalkSimulator(logits, labels, report["order"], exit_macs, fusion.head_macs,
                                     cfg.scheduler.exit_rule, fusion.modalities, agreement=True, rung=extra)

    def measure(thresholds: dict[str, float], sims: dict = sims) -> dict[str, float]:
        out = {}
        for split, sim in sims.items():
            pred, macs = sim.predictions(thresholds)
            out[split] = {"accuracy": float((pred == sim.labels).mean()), "macs": float(macs.mean()),
                          "disagreement": float((pred != sim.full_predictions()).mean())}
        return out

    rows = {"no-regret (today)": {"thresholds": report["thresholds"], **measure(report["thresholds"])}}
    sc = cfg.scheduler
    agreed, _ = agree["val"].search(sc.calibration_drop, sc.calibration_precision, max_regret=sc.calibration_regret)
    rows["no-regret + agreement"] = {"thresholds": agreed, **measure(agreed, agree)}
    for alpha in ALPHAS:
        chosen = risk_controlled_shift(sims["val"], report["thresholds"], alpha, delta=0.1)
        rows[f"LTT alpha={alpha}"] = {"thresholds": chosen.thresholds, "shift": chosen.shift, **measure(chosen.thresholds)}
        chosen = risk_controlled_shift(agree["val"], agreed, alpha, delta=0.1)
        rows[f"agreement + LTT alpha={alpha}"] = {"thresholds": chosen.thresholds, "shift": chosen.shift,
                                                  **measure(chosen.thresholds, agree)}
    rows["full"] = {"test": {"accuracy": sims["test"].full_accuracy(), "macs": sims["test"].checks[-1][2]},
                    "val": {"accuracy": sims["val"].full_accuracy(), "macs": sims["val"].checks[-1][2]}}
    return rows


def bench_fold(cfg: Config, dataset: str, limit: int, warmup: int = 20) -> dict[str, Any]:
    parts = AdaptiveParts(cfg, dataset)
    samples = list(split_samples(load_split(cfg, "test", dataset, progress=False), limit))
    rows = {}
    with get_power_meter(cfg.power.meter) as meter:
        for name in SYSTEMS:
            if name == "full":  # with a last rung: the strongest path (the CNN's full path, lf, mixed)
                system = parts.full()
            elif name == "cnn-full":  # the CNN family's own full path, without the rung
                system = parts.static({m: e.num_exits - 1 for m, e in parts.encoders.items()}, name="cnn-full")
            elif name == "lf":  # on the same backend as the others (one ONNX Runtime graph)
                system = baseline_system(cfg, "lf", baseline_dataset(dataset, "lf"))
            elif name == "static":
                system = parts.static(static_exits_matching(parts, rows["exitflow-fixed"]["macs_per_sample"]))
            else:
                system = bench_systems(parts, meter)[name]
            for sample in samples[:warmup]:
                system.process(sample)
            if name.startswith("exitflow"):
                system = bench_systems(parts, meter)[name]  # fresh: the online run starts from the calibrated point
            row = run_system(system, samples, meter)
            row.update(shadow_columns(row["decisions"], system))
            rows[name] = {k: v for k, v in row.items() if k != "decisions"}
    return rows


def run_fold(test: str, dataset: str, seed: int, limit: int, crit_limit: int, sets: list[str] | None = None,
             variant: str = "default") -> dict[str, Any]:
    overrides = fold_overrides(test, seed)
    cfg = load_config(None, [*overrides, "power.meter=psutil", *(sets or [])])
    took = ensure_models(cfg, overrides, dataset, seed)
    with get_power_meter("psutil") as meter:
        start = time.perf_counter()
        report = calibrate_family(cfg, dataset, meter, energy_samples=50, progress=False)
        took["calibrate_s"] = time.perf_counter() - start
    return {"test_voice": test, "cal_voice": fold_roles(test)["val"][0], "dataset": dataset, "seed": seed,
            "variant": variant, "sets": sets or [],
            "limit": limit, "took": took, "calibration": {k: report.get(k) for k in (
                "order", "thresholds", "val_accuracy", "val_full_accuracy", "val_macs", "rung", "val_escalated")},
            "criteria": criteria(cfg, dataset, report, crit_limit), "bench": bench_fold(cfg, dataset, limit)}


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def _cell(b: dict[str, Any], sep: str, macs_unit: str) -> str:
    """One bench row as accuracy / MACs (M) / ms / mJ."""
    mj = "-" if b["mj_per_sample"] is None else f"{b['mj_per_sample']:.2f}"
    return sep.join([f"{b['accuracy']:.4f}", f"{b['macs_per_sample'] / 1e6:.2f}{macs_unit}", f"{b['ms_per_sample']:.2f}", mj])


def print_report(results: list[dict[str, Any]]) -> None:
    for dataset in sorted({r["dataset"] for r in results}):
        rs = [r for r in results if r["dataset"] == dataset]
        print(f"\n== {dataset}: test voice (calibration voice), accuracy / MACs (M) / ms / mJ per sample")
        print(f"{'voice':<20}" + "".join(f"{s:>30}" for s in SYSTEMS))
        for r in rs:
            cells = [_cell(r["bench"][s], "/", "") for s in SYSTEMS]
            print(f"{r['test_voice'] + ' (' + r['cal_voice'] + ') s' + str(r['seed']):<20}" + "".join(f"{c:>30}" for c in cells))
        for key, label, scale in (("accuracy", "accuracy", 1.0), ("macs_per_sample", "MACs (M)", 1e-6),
                                  ("ms_per_sample", "ms", 1.0), ("mj_per_sample", "mJ", 1.0)):
            print(f"{'mean ' + label:<20}" + "".join(
                f"{_mean_sd([(r['bench'][s][key] or 0.0) * scale for r in rs]):>30}" for s in SYSTEMS))
        print_gate(rs)
        online = [r["bench"]["exitflow"] for r in rs]
        print("exitflow (online): shadow share " + ", ".join(f"{o['shadow_share']:.3f}" for o in online)
              + "; disagreement " + ", ".join("-" if o["disagreement"] is None else f"{o['disagreement']:.4f}" for o in online))
        print(f"\n-- {dataset}: calibration criteria, chosen on the calibration voice -> test voice "
              "(accuracy / MACs (M) / disagreement with full)")
        names = [n for n in rs[0]["criteria"] if all(n in r["criteria"] for r in rs)]
        for r in rs:
            for name in names:
                c = r["criteria"][name]
                t, v = c["test"], c["val"]
                dis = f"{t['disagreement']:.4f}" if "disagreement" in t else "-"
                print(f"{r['test_voice']:<9}{name:<20} val {v['accuracy']:.4f}/{v['macs'] / 1e6:.2f}  "
                      f"test {t['accuracy']:.4f}/{t['macs'] / 1e6:.2f}/{dis}")
        for name in names:
            print(f"{'mean':<9}{name:<20} test accuracy {_mean_sd([r['criteria'][name]['test']['accuracy'] for r in rs])}"
                  f"  MACs {_mean_sd([r['criteria'][name]['test']['macs'] / 1e6 for r in rs])} M")


def _best(r: dict[str, Any]) -> float:
    """The most accurate single-pass system a user could pick on this voice (``cnn-full`` where benched)."""
    return max(r["bench"][s]["accuracy"] for s in ("full", "cnn-full", "lf") if s in r["bench"])


def print_gate(rs: list[dict[str, Any]]) -> None:
    """Issue 25's acceptance, per system: mean accuracy against the mean best, worst voice, MACs and time ratios."""
    def mean(s: str, key: str) -> float:
        return statistics.mean(r["bench"][s][key] for r in rs)

    for s in ("exitflow", "exitflow-fixed"):
        gaps = [100 * (r["bench"][s]["accuracy"] - _best(r)) for r in rs]
        print(f"{s} vs the best of full, cnn-full and lf: " + ", ".join(
            f"{r['test_voice']} {g:+.2f} pt" for r, g in zip(rs, gaps, strict=True)))
        print(f"  gate: mean {statistics.mean(gaps):+.2f} pt (>= -0.5), worst {min(gaps):+.2f} pt (>= -1.5), "
              f"MACs {mean('full', 'macs_per_sample') / mean(s, 'macs_per_sample'):.2f}x fewer than full (>= 3), "
              f"{mean('lf', 'macs_per_sample') / mean(s, 'macs_per_sample'):.2f}x fewer than lf (>= 2), "
              f"{mean('lf', 'ms_per_sample') / mean(s, 'ms_per_sample'):.2f}x less time than lf (>= 1.5)")


def print_markdown(results: list[dict[str, Any]]) -> None:
    """The per-voice tables of docs/adaptive.md (accuracy / MACs in M / ms / mJ, then mean +- sd)."""
    for dataset in sorted({r["dataset"] for r in results}):
        rs = [r for r in results if r["dataset"] == dataset]
        print(f"\n`{dataset}` (accuracy / MACs / ms / mJ per sample):\n")
        print("| test voice (calibration) | " + " | ".join(f"`{s}`" for s in SYSTEMS) + " |")
        print("|---" * (len(SYSTEMS) + 1) + "|")
        for r in rs:
            cells = [_cell(r["bench"][s], " / ", " M") for s in SYSTEMS]
            print(f"| {r['test_voice']} ({r['cal_voice']}) | " + " | ".join(cells) + " |")
        for key, label, scale in (("accuracy", "accuracy", 1.0), ("macs_per_sample", "MACs (M)", 1e-6)):
            print(f"| mean +- sd {label} | " + " | ".join(
                _mean_sd([r["bench"][s][key] * scale for r in rs]) for s in SYSTEMS) + " |")
        names = [n for n in rs[0]["criteria"] if all(n in r["criteria"] for r in rs)]
        print("\n| criterion (chosen on the calibration voice) | " + " | ".join(r["test_voice"] for r in rs)
              + " | mean +- sd |")
        print("|---" * (len(rs) + 2) + "|")
        for name in names:
            cells = [f"{r['criteria'][name]['test']['accuracy']:.4f} / {r['criteria'][name]['test']['macs'] / 1e6:.2f} M"
                     for r in rs]
            acc = _mean_sd([r["criteria"][name]["test"]["accuracy"] for r in rs])
            print(f"| {name} | " + " | ".join(cells) + f" | {acc} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", nargs="+", default=list(VOICES), choices=VOICES, help="test voices to run")
    ap.add_argument("--datasets", nargs="+", default=["avmnist", "avmnist-noisy"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--limit", type=int, default=2000, help="test rows benched per fold")
    ap.add_argument("--criteria-limit", type=int, default=None, help="rows of val/test for the criteria (default all)")
    ap.add_argument("--report", action="store_true", help="print the table from the results file only")
    ap.add_argument("--train-only", action="store_true", help="train the missing fold models and stop")
    ap.add_argument("--set", action="append", default=[], help="config override for calibrate and bench, e.g. "
                    "scheduler.last_rung=lf (give the run a --variant name)")
    ap.add_argument("--variant", default="default", help="the results' label for these overrides")
    ap.add_argument("--jobs", type=int, default=2, help="with --train-only: trainings run at once")
    ap.add_argument("--markdown", action="store_true", help="with --report: the docs' markdown tables")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results_path = WORK / "results.jsonl"
    results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.is_file() else []
    if args.train_only:
        train_all(args.folds, args.datasets, args.seeds, args.jobs)
        return
    if not args.report:
        WORK.mkdir(parents=True, exist_ok=True)
        for test in args.folds:
            for dataset in args.datasets:
                for seed in args.seeds:
                    key = (test, dataset, seed, args.limit, args.variant)
                    if any((r["test_voice"], r["dataset"], r["seed"], r["limit"], r.get("variant", "default")) == key
                           for r in results):
                        continue
                    result = run_fold(test, dataset, seed, args.limit, args.criteria_limit, args.set, args.variant)
                    results.append(result)
                    with results_path.open("a") as f:
                        f.write(json.dumps(result, default=float) + "\n")
                    print(f"done {test} {dataset} seed {seed}: {json.dumps(result['took'])}", flush=True)
    chosen = [r for r in results if r["dataset"] in args.datasets and r.get("variant", "default") == args.variant]
    print_markdown(chosen) if args.markdown else print_report(chosen)


if __name__ == "__main__":
    main()
