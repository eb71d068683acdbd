"""scheduler/ must import neither torch nor ray (it runs on the lightest devices)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_scheduler_imports_no_torch_no_ray():
    modules = sorted(p.stem for p in (REPO / "scheduler").glob("*.py") if p.stem != "__init__")
    assert {"profile", "utility", "policy", "budget", "plan", "rules"} <= set(modules)
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('scheduler.' + name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
