#!/usr/bin/env bash
# The GPU check of issue 26 item 7, for a machine with an NVIDIA GPU: at most ~8 minutes, one JSON.
#
#   benchmarks/gpu_check.sh [OUT.json]          (default: gpu_check.json)
#
# 1. the GPU tests (pytest -m gpu), at most 200 s;
# 2. NVML energy per sample, `full` vs `exitflow`, at batch 1 and batch 32 (benchmarks/gpu_energy.py:
#    1000 avmnist test samples on cuda, the eager torch backend), at most 140 s;
# 3. the Ray Serve inference service on the GPU (benchmarks/batch_service.py with engine.device=cuda,
#    service.num_gpus=1: one GPU replica; per-sample calls beside a no-op deployment, micro-batch calls
#    beside the in-process batch engine), at most 150 s.
# Each step's exit code, log tail and figures go into the one JSON; a step that fails does not stop
# the others. GPU_CHECK_DEVICE=cpu GPU_CHECK_METER=psutil runs the same steps on a CPU-only machine
# (a dry run of the script itself; its figures say nothing about a GPU).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check.json}
PY=${PYTHON:-.venv/bin/python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
METER=${GPU_CHECK_METER:-nvml}
TMP=$(mktemp -d)
START=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader > "$TMP/gpu.txt" 2>&1 || true

if [ "$DEVICE" = "cpu" ]; then
  echo "dry run on CPU: GPU tests skipped" > "$TMP/tests.log"; echo 0 > "$TMP/tests.rc"
else
  timeout 200 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider > "$TMP/tests.log" 2>&1; echo $? > "$TMP/tests.rc"
fi

timeout 140 "$PY" benchmarks/gpu_energy.py --device "$DEVICE" --meter "$METER" --limit 1000 --batch-size 32 \
  --json "$TMP/energy.json" > "$TMP/energy.log" 2>&1; echo $? > "$TMP/energy.rc"

GPUS=1; [ "$DEVICE" = "cpu" ] && GPUS=0
RAY_SERVE_THROUGHPUT_OPTIMIZED=1 timeout 150 "$PY" benchmarks/batch_service.py --limit 2000 --batch-size 32 \
  --rounds 2 --set "engine.device=$DEVICE" --set "service.num_gpus=$GPUS" --set engine.backend=torch \
  --json "$TMP/service.json" > "$TMP/service.log" 2>&1; echo $? > "$TMP/service.rc"
"$PY" -c "import ray; ray.shutdown()" > /dev/null 2>&1 || true

"$PY" - "$TMP" "$OUT" "$START" "$DEVICE" <<'EOF'
import json, pathlib, sys, time
tmp, out, start, device = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]

def step(name):
    rc = int((tmp / f"{name}.rc").read_text().strip() or 1)
    log = (tmp / f"{name}.log").read_text(errors="replace")
    figures = tmp / f"{name}.json"
    return {"rc": rc, "ok": rc == 0, "log_tail": log[-3000:],
            "figures": json.loads(figures.read_text()) if figures.is_file() else None}

result = {
    "device": device,
    "gpu": (tmp / "gpu.txt").read_text().strip(),
    "seconds": round(time.time() - start, 1),
    "gpu_tests": step("tests"),
    "energy_full_vs_exitflow": step("energy"),
    "service_on_gpu": step("service"),
}
pathlib.Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
print(f"{out}: {result['seconds']} s; tests rc {result['gpu_tests']['rc']}, energy rc "
      f"{result['energy_full_vs_exitflow']['rc']}, service rc {result['service_on_gpu']['rc']}")
EOF
