"""Start-up time the local runtime saves by never loading Ray.

Each figure is the wall time of a fresh interpreter, so the imports are measured as a user's
``exitflow run`` pays them; the two kinds of run alternate (``--repeats`` of each) and the fastest
of each is reported (the least disturbed by other work on the machine), with the median beside it:

- ``local``: ``import exitflow.pipeline.live.run`` and the local runtime, what ``runtime: local``
  loads (no Ray);
- ``local + import ray``: the same plus ``import ray``, what every local run paid while
  ``live/workers.py`` imported Ray at module level;
- ``ray.init`` (``--init``): starting and stopping a local Ray instance as ``runtime: ray`` does
  (``start_ray`` with the default ``ray`` section), measured once: it spawns Ray's processes.

    PYTHONPATH=.. python benchmarks/local_startup.py --repeats 5 --init
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

LOCAL = "import exitflow.pipeline.live.run, exitflow.pipeline.live.runtime.local"
WITH_RAY = LOCAL + "; import ray"
RAY_INIT = (
    "import time; from exitflow.pipeline.config import RayConfig; "
    "from exitflow.pipeline.live.runtime.ray.connect import start_ray, stop_ray; "
    "t = time.perf_counter(); start_ray(RayConfig()); stop_ray(); print(time.perf_counter() - t)"
)


def wall_s(code: str) -> float:
    """Seconds a fresh interpreter takes to run ``code`` and exit."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per figure (median)")
    parser.add_argument("--init", action="store_true", help="also time ray.init + shutdown once")
    args = parser.parse_args()
    wall_s(LOCAL)  # warm the OS file cache once, so the first figure is not the only cold one
    wall_s(WITH_RAY)
    runs: dict[str, list[float]] = {"local": [], "with_ray": []}
    for _ in range(args.repeats):  # alternate, so a burst of load elsewhere hits both alike
        runs["local"].append(wall_s(LOCAL))
        runs["with_ray"].append(wall_s(WITH_RAY))
    local, with_ray = min(runs["local"]), min(runs["with_ray"])
    out: dict[str, float | int] = {
        "repeats": args.repeats, "local_s": round(local, 3), "local_plus_import_ray_s": round(with_ray, 3),
        "import_ray_s": round(with_ray - local, 3),
        "local_median_s": round(statistics.median(runs["local"]), 3),
        "local_plus_import_ray_median_s": round(statistics.median(runs["with_ray"]), 3),
    }
    print(f"local runtime imports:           {local:.2f} s (median {out['local_median_s']:.2f} s)")
    print(f"local + import ray:              {with_ray:.2f} s (median {out['local_plus_import_ray_median_s']:.2f} s)"
          f"  -> import ray costs {with_ray - local:.2f} s")
    if args.init:
        proc = subprocess.run([sys.executable, "-c", RAY_INIT], check=True, capture_output=True, text=True)
        init_s = float(proc.stdout.strip().splitlines()[-1])
        out["ray_init_shutdown_s"] = round(init_s, 3)
        print(f"ray.init + shutdown (runtime: ray): {init_s:.2f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
