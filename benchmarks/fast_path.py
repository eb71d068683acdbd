"""Where a sample's time goes, on both backends, at batch 1 and batch 32, against this CPU's peak.

One run, one process, the same samples for every row (the avmnist test split of the configured data
root), ``engine.num_threads`` threads (1 by default):

1. **Peak**: fp32 square matrix products 256..1024 on one thread in ``torch.matmul`` and in ONNX
   Runtime, best GMAC/s — the arithmetic limit the encoders' layers could reach.
2. **Batch 1 per-step profile**: ``exitflow`` on the eager reference engine (``engine.backend:
   torch``) and on the compiled fast path (``onnxruntime``): mean µs per sample of every stage the
   engine times (encoder steps or compiled calls, fused checks, policy), the rest of the sample
   (conversions, decision bookkeeping) and the meter window (timed apart: one ``begin/end`` pair);
   ``full`` and ``static`` (exitflow's MACs) on both backends as the systems a user could pick.
3. **Batch 32**: the reference ``BatchEngine`` vs the fast path's compacting batches, and ``full``
   batched on each backend: samples/s.

Every row carries MACs/sample and the GMAC/s it achieves (MACs / time) as a share of the peak.

    PYTHONPATH=. .venv/bin/python benchmarks/fast_path.py --limit 1000 [--json runs/fast_path.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from exitflow.pipeline.config import load_config
from exitflow.pipeline.evaluation.bench import bench_inputs, static_exits_matching
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from exitflow.pipeline.inference.batch_engine import BatchEngine
from exitflow.pipeline.meters import open_meter


def peak_gmacs(repeats: int = 5) -> tuple[float, dict[str, float]]:
    """This core's fp32 arithmetic peak as measured: the best GMAC/s of one-thread square matrix products
    (256, 512, 1024) in ``torch.matmul`` and in an ONNX Runtime ``MatMul`` graph (its kernels use the
    widest vector units: on AVX-512 machines it beats torch's); returns (best, per kernel)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    best = {"torch.matmul": 0.0, "onnxruntime MatMul": 0.0}
    for n in (256, 512, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best["torch.matmul"] = max(best["torch.matmul"], n**3 / (time.perf_counter() - t0) / 1e9)
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                    so, providers=["CPUExecutionProvider"])
        feed = {"a": a.numpy(), "b": b.numpy()}
        sess.run(None, feed)
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, feed)
            best["onnxruntime MatMul"] = max(best["onnxruntime MatMul"], n**3 / (time.perf_counter() - t0) / 1e9)
    return max(best.values()), best


def timed(system: Any, samples: list, repeats: int) -> tuple[list, float]:
    """Decisions of the last run and the best mean ms/sample over ``repeats`` runs (noise only adds time)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        decisions = [system.process(s) for s in samples]
        best = min(best, (time.perf_counter() - t0) * 1000.0 / len(samples))
    return decisions, best


def timed_batches(run: Any, samples: list, batch: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(samples), batch):
            out = run(samples[i : i + batch])
            bad = [r for r in out if isinstance(r, Exception)]
            if bad:
                raise RuntimeError(f"a batch failed: {bad[0]!r}")
        best = min(best, time.perf_counter() - t0)
    return len(samples) / best


def stage_profile(decisions: list) -> dict[str, float]:
    """Mean µs per sample of every stage (a stage a sample skipped counts 0 for it)."""
    sums: dict[str, float] = defaultdict(float)
    for d in decisions:
        for k, v in d.latency_ms.items():
            sums[k] += v * 1000.0
    n = len(decisions)
    prof = {k: v / n for k, v in sums.items()}
    steps = sum(v for k, v in prof.items() if k not in ("policy", "total", "model"))
    prof["other"] = prof.get("total", 0.0) - steps - prof.get("policy", 0.0)
    return prof


def meter_window_us(meter: Any, n: int = 2000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        meter.begin_window("probe")
        meter.end_window("probe")
    return (time.perf_counter() - t0) * 1e6 / n


def row(name: str, backend: str, decisions: list, ms: float, peak: float) -> dict[str, Any]:
    macs = float(np.mean([d.macs for d in decisions]))
    acc = float(np.mean([d.prediction == d.label for d in decisions]))
    gmacs = macs / (ms / 1000.0) / 1e9
    return {"system": name, "backend": backend, "accuracy": acc, "macs_per_sample": macs, "ms_per_sample": ms,
            "gmacs": gmacs, "peak_share": gmacs / peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="avmnist")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = load_config(None, [])
    fast_parts, samples = bench_inputs(cfg, args.dataset, "test", args.limit)
    eager_parts = AdaptiveParts(dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, backend="torch")),
                                args.dataset)
    torch.set_num_threads(cfg.engine.num_threads or torch.get_num_threads())
    meter = open_meter(cfg)
    peak, kernels = peak_gmacs()
    print(f"peak: {peak:.1f} GMAC/s fp32, one thread (" + ", ".join(f"{k} {v:.1f}" for k, v in kernels.items())
          + f"); {platform.processor() or platform.machine()}; {len(samples)} samples")
    result: dict[str, Any] = {"peak_gmacs": peak, "peak_kernels": kernels, "n": len(samples), "batch1": [], "batch": [],
                              "profiles": {}}
    for parts in (eager_parts, fast_parts):
        backend = parts.backend_name
        exitflow = parts.exitflow(meter=meter, budget=False)
        for s in samples[:50]:
            exitflow.process(s)
        decisions, ms = timed(exitflow, samples, args.repeats)
        result["batch1"].append(row("exitflow", backend, decisions, ms, peak))
        result["profiles"][backend] = stage_profile(decisions)
        exits = static_exits_matching(parts, float(np.mean([d.macs for d in decisions])))
        for name, system in (("full", parts.full()), ("static", parts.static(exits))):
            for s in samples[:50]:
                system.process(s)
            d, ms = timed(system, samples, args.repeats)
            result["batch1"].append(row(name, backend, d, ms, peak))
        # batch 32: exitflow (reference BatchEngine or the fast path's own batches) and full
        batcher = exitflow.engine if hasattr(exitflow.engine, "process_batch") else BatchEngine(exitflow.engine)
        full = parts.full()
        for name, run in (("exitflow", batcher.process_batch), ("full", full.process_batch)):
            run(samples[: args.batch_size])
            sps = timed_batches(run, samples, args.batch_size, args.repeats)
            macs = result["batch1"][0 if name == "exitflow" else 1]["macs_per_sample"]
            result["batch"].append({"system": name, "backend": backend, "batch_size": args.batch_size,
                                    "samples_per_s": sps, "gmacs": macs * sps / 1e9, "peak_share": macs * sps / 1e9 / peak})
    result["meter_window_us"] = meter_window_us(meter)
    result["meter"] = str(getattr(meter, "source", type(meter).__name__))
    print(f"\nbatch 1 ({cfg.engine.num_threads} thread):")
    print(f"{'system':<10}{'backend':<13}{'accuracy':>9}{'MACs/sample':>13}{'ms/sample':>11}{'GMAC/s':>8}{'of peak':>9}")
    for r in result["batch1"]:
        print(f"{r['system']:<10}{r['backend']:<13}{r['accuracy']:>9.4f}{r['macs_per_sample']:>13,.0f}"
              f"{r['ms_per_sample']:>11.3f}{r['gmacs']:>8.2f}{100 * r['peak_share']:>8.1f}%")
    by = {(r["system"], r["backend"]): r for r in result["batch1"]}
    for backend in ("torch", "onnxruntime"):
        x, f, st = (by[(n, backend)]["ms_per_sample"] for n in ("exitflow", "full", "static"))
        print(f"  {backend}: exitflow/full ms {x / f:.2f}, exitflow/static ms {x / st:.2f}")
    print(f"  onnxruntime vs torch: exitflow {by[('exitflow', 'torch')]['ms_per_sample'] / by[('exitflow', 'onnxruntime')]['ms_per_sample']:.1f}x, "
          f"full {by[('full', 'torch')]['ms_per_sample'] / by[('full', 'onnxruntime')]['ms_per_sample']:.1f}x faster")
    for backend, prof in result["profiles"].items():
        total = prof["total"]
        print(f"\nexitflow per-sample profile, {backend} (µs/sample, share of the engine's total {total:.1f} µs):")
        for k, v in sorted(prof.items(), key=lambda kv: -kv[1]):
            if k != "total":
                print(f"  {k:<60}{v:>9.1f}{100 * v / total:>7.1f}%")
    print(f"  meter window ({result['meter']}), one begin/end pair: {result['meter_window_us']:.1f} µs "
          "(inside the engine's total)")
    print(f"\nbatch {args.batch_size}:")
    for r in result["batch"]:
        print(f"  {r['system']:<10}{r['backend']:<13}{r['samples_per_s']:>10,.0f} samples/s{r['gmacs']:>8.2f} GMAC/s"
              f"{100 * r['peak_share']:>7.1f}% of peak")
    bb = {(r["system"], r["backend"]): r["samples_per_s"] for r in result["batch"]}
    for backend in ("torch", "onnxruntime"):
        print(f"  {backend}: exitflow/full samples/s {bb[('exitflow', backend)] / bb[('full', backend)]:.2f}")
    policy = result["profiles"]["onnxruntime"].get("policy", 0.0) / result["profiles"]["onnxruntime"]["total"]
    print(f"\npolicy share of exitflow's time (onnxruntime): {100 * policy:.2f} %")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
