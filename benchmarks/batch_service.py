"""The Ray Serve inference service against Serve's own per-request cost and the in-process BatchEngine.

On the first N avmnist test samples (the project's loaders), with the default CNN checkpoints and
config.yaml's scheduler, one run measures side by side, on one local Ray:

- ``engine batch-1``: ``Engine.process`` one sample after another, in process (the reference);
- ``BatchEngine``: ``process_batch`` over batches of ``--batch-size``, in process (compute only);
- ``no-op per-sample``: a Serve deployment that answers at once (same ``@serve.batch`` settings,
  same payloads, a constant reply), ``--in-flight`` calls outstanding from an asyncio client: the
  request rate Serve itself allows on this machine;
- ``service per-sample``: the exitflow service (one replica, ``@serve.batch`` of ``--batch-size``),
  the same client, every call one sample;
- ``service micro-batch``: the same service, every call carrying ``--batch-size`` samples (a driver
  serving several robots), ``--batch-in-flight`` calls outstanding.

Every mode's decisions are compared with batch-1's (prediction, exits, exit layers, exited_by,
MACs, order, skipped, missing, fused checks). The acceptance ratios are printed and written:
service per-sample / no-op (request rate) and service micro-batch / BatchEngine (samples/s).
``--sweep`` also runs the in-process modes at three fused-check thresholds.

    .venv/bin/python benchmarks/batch_service.py --limit 1000 --batch-size 32 [--json out.json] [--sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import torch
from ray import serve

from exitflow.pipeline.config import RayConfig, ServiceConfig, load_config
from exitflow.pipeline.evaluation.bench import bench_inputs
from exitflow.pipeline.inference.batch_engine import BatchEngine
from exitflow.pipeline.inference.engine import Engine, policy_from_config
from exitflow.pipeline.live.runtime.ray.connect import start_ray
from exitflow.pipeline.live.runtime.ray.service import (
    InferenceService,
    deployment_options,
    service_shutdown,
)
from exitflow.pipeline.messages import Decision, Sample


@serve.deployment
class Noop:
    """Answers every sample at once: what Serve's request path costs, with the service's batching."""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.__call__.set_max_batch_size(int(user_config["max_batch_size"]))
        self.__call__.set_batch_wait_timeout_s(float(user_config["batch_wait_ms"]) / 1000.0)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def __call__(self, samples: list[Sample]) -> list[int]:
        return [0] * len(samples)


def key(d: Decision) -> tuple:
    return (d.sample_id, d.prediction, d.exits, d.exit_layers, d.exited_by, d.macs, d.order, d.skipped,
            d.missing, d.fused_checks)


def row(mode: str, decisions: list[Decision] | None, seconds: float, n: int, reference: list[tuple],
        **extra: Any) -> dict[str, Any]:
    out = {"mode": mode, "n": n, "samples_per_s": n / seconds, "ms_per_sample": seconds / n * 1000.0, **extra}
    if decisions is not None:
        out.update(macs_per_sample=sum(d.macs for d in decisions) / n,
                   accuracy=sum(d.prediction == d.label for d in decisions) / n,
                   same_decisions=[key(d) for d in decisions] == reference)
    return out


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


async def pump(calls: list[Callable[[], Awaitable[Any]]], in_flight: int) -> tuple[list[Any], float]:
    """Run ``calls`` with at most ``in_flight`` outstanding; results in order, wall seconds."""
    results: list[Any] = [None] * len(calls)
    it = iter(enumerate(calls))

    async def worker() -> None:
        for i, call in it:
            results[i] = await call()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(min(in_flight, len(calls)))])
    return results, time.perf_counter() - t0


def decisions_of(results: list[Any]) -> list[Decision]:
    out = []
    for decision, _, error in results:
        if error is not None:
            raise RuntimeError(f"sample {decision.sample_id} failed in the service: {error}")
        out.append(decision)
    return out


async def serve_modes(service: InferenceService, samples: list[Sample], args: Any,
                      reference: list[tuple]) -> list[dict[str, Any]]:
    """The three Serve modes, on this (the client's) event loop."""
    rows = []
    noop = serve.get_deployment_handle("noop", app_name="exitflow-noop")
    batches = [samples[i : i + args.batch_size] for i in range(0, len(samples), args.batch_size)]
    await pump([lambda s=s: noop.remote(s) for s in samples[:200]], args.in_flight)  # warm-up
    _, seconds = await pump([lambda s=s: noop.remote(s) for s in samples], args.in_flight)
    rows.append(row("no-op per-sample", None, seconds, len(samples), reference, in_flight=args.in_flight))

    await pump([lambda s=s: service.decide_aio(s) for s in samples[:200]], args.in_flight)  # warm-up
    base = await service.status_aio()
    results, seconds = await pump([lambda s=s: service.decide_aio(s) for s in samples], args.in_flight)
    end = await service.status_aio()
    batch_mean = (end["items"] - base["items"]) / max(1, end["batches"] - base["batches"])
    rows.append(row("service per-sample", decisions_of(results), seconds, len(samples), reference,
                    in_flight=args.in_flight, batch_size_mean=round(batch_mean, 2),
                    replica_busy_share=round((end["busy_s"] - base["busy_s"]) / seconds, 3)))

    await pump([lambda b=b: service.decide_many_aio(b) for b in batches[:4]], args.batch_in_flight)  # warm-up
    base = await service.status_aio()
    results, seconds = await pump([lambda b=b: service.decide_many_aio(b) for b in batches], args.batch_in_flight)
    end = await service.status_aio()
    rows.append(row("service micro-batch", decisions_of([r for rs in results for r in rs]), seconds, len(samples),
                    reference, in_flight=args.batch_in_flight, batch_size=args.batch_size,
                    replica_busy_share=round((end["busy_s"] - base["busy_s"]) / seconds, 3),
                    replica_samples_per_busy_s=round((end["items"] - base["items"]) / (end["busy_s"] - base["busy_s"]), 1)))
    return rows


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
    ap.add_argument("--wait-ms", type=float, default=5.0, help="service.batch_wait_ms")
    ap.add_argument("--in-flight", type=int, default=64, help="per-sample calls outstanding at once")
    ap.add_argument("--batch-in-flight", type=int, default=4, help="micro-batch calls outstanding at once")
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
    rows = [row("engine batch-1", ref_decisions, t_ref, len(samples), reference)]
    batched = BatchEngine(engine)
    run_batched(batched, samples[:64], args.batch_size)  # warm-up
    got, seconds = run_batched(batched, samples, args.batch_size)
    rows.append(row("BatchEngine", got, seconds, len(samples), reference, batch_size=args.batch_size))

    service_cfg = ServiceConfig(name="exitflow-bench", max_batch_size=args.batch_size, batch_wait_ms=args.wait_ms,
                                max_ongoing_requests=max(args.in_flight, 2 * args.batch_size), shed_after_ms=None,
                                num_cpus=1.0)
    start_ray(RayConfig(num_cpus=2, namespace="exitflow-batch-bench"))
    try:
        serve.start(proxy_location="Disabled")
        serve.run(Noop.options(**deployment_options(service_cfg, "noop")).bind(), name="exitflow-noop",
                  route_prefix=None)
        service = InferenceService.start("system:exitflow", cfg, service=service_cfg)
        rows += service.run(lambda: serve_modes(service, samples, args, reference))
    finally:
        service_shutdown()
    by = {r["mode"]: r for r in rows}
    ratios = {
        "per_sample_vs_noop": by["service per-sample"]["samples_per_s"] / by["no-op per-sample"]["samples_per_s"],
        "micro_batch_vs_batch_engine": by["service micro-batch"]["samples_per_s"] / by["BatchEngine"]["samples_per_s"],
    }
    base = rows[0]["samples_per_s"]
    print(f"{'mode':<20} {'n':>5} {'samples/s':>10} {'ms/sample':>10} {'x batch-1':>9} {'MACs/sample':>12} "
          f"{'acc':>6} same  batch")
    for r in rows:
        same = "-" if "same_decisions" not in r else ("yes" if r["same_decisions"] else "NO")
        print(f"{r['mode']:<20} {r['n']:>5} {r['samples_per_s']:>10.1f} {r['ms_per_sample']:>10.3f} "
              f"{r['samples_per_s'] / base:>9.2f} {r.get('macs_per_sample', 0):>12.0f} {r.get('accuracy', 0):>6.3f} "
              f"{same:<5} {r.get('batch_size_mean', r.get('batch_size', 1))}")
    print(f"service per-sample / no-op request rate: {ratios['per_sample_vs_noop']:.2f} (acceptance >= 0.80)")
    print(f"service micro-batch / BatchEngine samples/s: {ratios['micro_batch_vs_batch_engine']:.2f} "
          "(acceptance >= 0.80)")
    out: dict[str, Any] = {"rows": rows, "ratios": ratios, "load_avg_1m": os.getloadavg()[0],
                           "throughput_optimized": os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED")}
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
