"""Energy per sample of ``full`` vs ``exitflow`` at batch 1 and at batch 32, from a power meter (NVML on a GPU).

On the first N avmnist test samples with the default CNN family on ``--device`` (``cuda`` by
default; ``cpu`` for a dry run), each system runs the samples once one by one (``process``) and
once in batches of ``--batch-size`` (``process_batch`` through ``as_batch_engine``: every sample
keeps its own exits, exited rows leave the batch), each inside one meter window after a warm-up.
The meter is ``--meter`` (``nvml``: the GPU's board energy counter, or its power samples; ``auto``
picks what the machine has). Written: mJ/sample (total and, where the meter knows the idle floor,
dynamic), ms/sample, MACs/sample, accuracy, the meter's source and whether it is estimated.

    .venv/bin/python benchmarks/gpu_energy.py --device cuda --meter nvml --limit 1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from exitflow.devices.registry import get_power_meter
from exitflow.pipeline.config import load_config
from exitflow.pipeline.evaluation.bench import bench_inputs
from exitflow.pipeline.inference.batch_engine import as_batch_engine
from exitflow.pipeline.messages import Decision


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(system: Any, samples: list, meter: Any, batch_size: int, device: str) -> dict[str, Any]:
    """One meter window over ``samples`` at ``batch_size`` (1: ``process`` per sample)."""
    batched = as_batch_engine(system) if batch_size > 1 else None
    warm = samples[: max(2 * batch_size, 20)]
    (batched.process_batch(warm) if batched is not None else [system.process(s) for s in warm])
    sync(device)
    meter.begin_window("gpu_energy")
    t0 = time.perf_counter()
    out: list[Any] = []
    if batched is None:
        out = [system.process(s) for s in samples]
    else:
        for i in range(0, len(samples), batch_size):
            out += batched.process_batch(samples[i : i + batch_size])
    sync(device)
    seconds = time.perf_counter() - t0
    m = meter.end_window("gpu_energy")
    decisions = [d for d in out if isinstance(d, Decision)]
    n = len(samples)
    return {
        "system": system.name, "batch_size": batch_size, "n": n, "failed": n - len(decisions),
        "mj_per_sample": None if m.energy_mj is None else m.energy_mj / n,
        "dynamic_mj_per_sample": None if getattr(m, "dynamic_energy_mj", None) is None else m.dynamic_energy_mj / n,
        "ms_per_sample": seconds * 1000.0 / n,
        "macs_per_sample": sum(d.macs for d in decisions) / max(1, len(decisions)),
        "accuracy": sum(d.prediction == d.label for d in decisions) / max(1, len(decisions)),
        "energy_source": m.source, "estimated": bool(m.estimated),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--meter", default="nvml", help="power meter (nvml, rapl, psutil, auto, null)")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = load_config(None, [f"engine.device={args.device}", "engine.backend=torch"])
    parts, samples = bench_inputs(cfg, "avmnist", "test", args.limit)
    meter = get_power_meter(args.meter)
    rows = []
    try:
        for make in (parts.full, lambda: parts.exitflow(meter=None, budget=False)):
            system = make()
            for batch_size in (1, args.batch_size):
                rows.append(measure(system, samples, meter, batch_size, args.device))
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()})
    finally:
        meter.close()
    out = {"device": args.device, "meter": args.meter, "rows": rows,
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
