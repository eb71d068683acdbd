"""Batched inference service vs one-sample calls on the same samples: same decisions, same MACs, throughput.

On the first N avmnist test samples (the project's loaders), with the default CNN checkpoints and
config.yaml's scheduler, one run measures side by side:

- ``engine batch-1``: ``Engine.process`` one sample after another, in process (the reference);
- ``BatchEngine``: ``process_batch`` over batches of ``--batch-size``, in process (compute only);
- ``service 1-by-1``: the Ray service (one replica, ``max_batch_size`` 1), one call at a time, each
  waiting for its answer (what a pipeline calling the old engine actor sees);
- ``service batched``: the same service with ``max_batch_size`` ``--batch-size``, ``--in-flight``
  calls outstanding at once (many robots calling one service).

Every mode's decisions are compared with batch-1's (prediction, exits, exit layers, exited_by,
MACs, order, skipped, missing, fused checks). ``--sweep`` also runs the in-process modes at three
fused-check thresholds to show batched time following the exit rate.

    .venv/bin/python benchmarks/batch_service.py --limit 1000 --batch-size 32 [--json out.json] [--sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import ray
import torch

from exitflow.pipeline.config import RayConfig, ServiceConfig, load_config
from exitflow.pipeline.evaluation.bench import bench_inputs
from exitflow.pipeline.inference.batch_engine import BatchEngine
from exitflow.pipeline.inference.engine import Engine, policy_from_config
from exitflow.pipeline.live.runtime.ray.connect import start_ray
from exitflow.pipeline.live.runtime.ray.service import InferenceService
from exitflow.pipeline.messages import Decision, Sample


def key(d: Decision) -> tuple:
    return (d.sample_id, d.prediction, d.exits, d.exit_layers, d.exited_by, d.macs, d.order, d.skipped,
            d.missing, d.fused_checks)


def row(mode: str, decisions: list[Decision], seconds: float, reference: list[tuple], **extra: Any) -> dict[str, Any]:
    n = len(decisions)
    return {
        "mode": mode, "n": n, "samples_per_s": n / seconds, "ms_per_sample": seconds / n * 1000.0,
        "macs_per_sample": sum(d.macs for d in decisions) / n,
        "accuracy": sum(d.prediction == d.label for d in decisions) / n,
        "same_decisions": [key(d) for d in decisions] == reference, **extra,
    }


def run_engine(engine: Engine, samples: list[Sample]) -> tuple[list[Decision], float]:
    t0 = time.perf_counter()
    out = [engine.process(s) for s in samples]
    return out, time.perf_counter() - t0


def run_batched(engine: BatchEngine, samples: list[Sample], batch_size: int) -> tuple[list[Decision], float]:
    t0 = time.perf_counter()
    out: list[Any] = []
    for i in range(0, len(samples), batch_size):
        out += engine.process_batch(samples[i : i + batch_size])
    seconds = time.perf_counter() - t0
    errors = [r for r in out if not isinstance(r, Decision)]
    if errors:
        raise RuntimeError(f"{len(errors)} samples failed in the batch engine: {errors[0]!r}")
    return out, seconds


def run_service(service: InferenceService, samples: list[Sample], in_flight: int) -> tuple[list[Decision], float]:
    """Every sample through the service with at most ``in_flight`` calls outstanding."""
    results: dict[int, Decision] = {}
    pending: dict[Any, int] = {}
    t0 = time.perf_counter()
    it = iter(enumerate(samples))
    done = False
    while not done or pending:
        while not done and len(pending) < in_flight:
            nxt = next(it, None)
            if nxt is None:
                done = True
                break
            pending[service.decide_async(nxt[1])] = nxt[0]
        if pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=60)
            for ref in ready:
                decision, _, error = ray.get(ref)
                if error is not None:
                    raise RuntimeError(f"sample {decision.sample_id} failed in the service: {error}")
                results[pending.pop(ref)] = decision
    return [results[i] for i in range(len(samples))], time.perf_counter() - t0


def sweep(parts: Any, cfg: Any, samples: list[Sample], batch_size: int, repeats: int = 3) -> list[dict[str, Any]]:
    """In-process batch-1 vs batched at three fused-check thresholds (entropy: higher exits more);
    times are the best of ``repeats`` runs."""
    rows = []
    for threshold in (0.0, 0.3, 1.0):
        sched = dataclasses.replace(cfg.scheduler, thresholds={**cfg.scheduler.thresholds, "fusion": threshold})
        engine = Engine(parts.encoders, parts.fusion, policy_from_config(parts.profile, sched),
                        input_adapter=parts.input_adapter)
        batched = BatchEngine(engine)
        ref, t1 = run_engine(engine, samples)
        got, t2 = run_batched(batched, samples, batch_size)
        for _ in range(repeats - 1):  # best of `repeats`: the machine is shared, noise only adds time
            t1 = min(t1, run_engine(engine, samples)[1])
            t2 = min(t2, run_batched(batched, samples, batch_size)[1])
        exit_rate = sum(d.exits.get("audio", 0) == 0 for d in ref) / len(ref)
        rows.append({
            "fusion_threshold": threshold, "exit_at_first_check": exit_rate,
            "macs_per_sample": sum(d.macs for d in ref) / len(ref),
            "batch1_ms_per_sample": t1 / len(ref) * 1000.0, "batched_ms_per_sample": t2 / len(ref) * 1000.0,
            "same_decisions": [key(d) for d in got] == [key(d) for d in ref],
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--wait-ms", type=float, default=5.0, help="service.batch_wait_ms of the batched service")
    ap.add_argument("--in-flight", type=int, default=64, help="calls outstanding at once (service batched)")
    ap.add_argument("--sweep", action="store_true", help="also time batch-1 vs batched at three thresholds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, ["engine.num_threads=1"])
    parts, samples = bench_inputs(cfg, "avmnist", "test", args.limit)
    engine = parts.exitflow(meter=None, budget=False).engine
    run_engine(engine, samples[:50])  # warm-up
    ref_decisions, t_ref = run_engine(engine, samples)
    reference = [key(d) for d in ref_decisions]
    rows = [row("engine batch-1", ref_decisions, t_ref, reference)]
    got, seconds = run_batched(BatchEngine(engine), samples, args.batch_size)
    rows.append(row("BatchEngine", got, seconds, reference, batch_size=args.batch_size))

    start_ray(RayConfig(num_cpus=2, namespace="exitflow-batch-bench"))
    for mode, batch, wait_ms, in_flight in (("service 1-by-1", 1, 0.0, 1),
                                            ("service batched", args.batch_size, args.wait_ms, args.in_flight)):
        service = InferenceService.start("system:exitflow", cfg, service=ServiceConfig(
            name=f"bench-{batch}", max_batch_size=batch, batch_wait_ms=wait_ms, num_cpus=1, detached=False))
        try:
            service.wait_ready(timeout_s=300)
            run_service(service, samples[:50], in_flight)  # warm-up
            got, seconds = run_service(service, samples, in_flight)
            stats = service.stats()
            served = stats["items"] - 50
            rows.append(row(mode, got, seconds, reference, batch_size_mean=round(stats["batch_size_mean"], 2),
                            in_flight=in_flight, served=served))
        finally:
            service.shutdown()
    ray.shutdown()
    base = rows[0]["samples_per_s"]
    print(f"{'mode':<16} {'n':>5} {'samples/s':>10} {'ms/sample':>10} {'x batch-1':>9} {'MACs/sample':>12} "
          f"{'acc':>6} same  batch")
    for r in rows:
        print(f"{r['mode']:<16} {r['n']:>5} {r['samples_per_s']:>10.1f} {r['ms_per_sample']:>10.3f} "
              f"{r['samples_per_s'] / base:>9.2f} {r['macs_per_sample']:>12.0f} {r['accuracy']:>6.3f} "
              f"{'yes' if r['same_decisions'] else 'NO':<5} {r.get('batch_size_mean', r.get('batch_size', 1))}")
    by = {r["mode"]: r for r in rows}
    print(f"service batched / service 1-by-1 throughput: "
          f"{by['service batched']['samples_per_s'] / by['service 1-by-1']['samples_per_s']:.2f}x")
    out: dict[str, Any] = {"rows": rows}
    if args.sweep:
        out["sweep"] = sweep(parts, cfg, samples, args.batch_size)
        print("fusion threshold  exit@1st check  MACs/sample  batch-1 ms  batched ms  same")
        for s in out["sweep"]:
            print(f"{s['fusion_threshold']:>16.1f} {s['exit_at_first_check']:>15.3f} {s['macs_per_sample']:>12.0f} "
                  f"{s['batch1_ms_per_sample']:>11.3f} {s['batched_ms_per_sample']:>11.3f}  "
                  f"{'yes' if s['same_decisions'] else 'NO'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
