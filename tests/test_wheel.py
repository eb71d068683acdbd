"""A wheel built from the checkout works outside it: one namespace, packaged config and checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def copy_checkout(dest: Path) -> Path:
    """Copy the files git tracks (and new, not ignored ones) to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, installed (without dependencies) into an empty target."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = copy_checkout(tmp / "source")  # what a clean clone holds; the build writes there, not here
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp)],
        capture_output=True, text=True, timeout=600,
    )
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{build.stderr[-3000:]}")
    wheel = next(tmp.glob("exitflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"exitflow"}, f"the wheel installs more than exitflow at the top level: {sorted(tops)}"
    assert "exitflow/resources/config.yaml" in names
    target = tmp / "target"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=600,
    )
    return target


def run_outside(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("EXITFLOW_HOME", None)
    env["HOME"] = str(cwd)  # outputs of the packaged config go to ~/.exitflow
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_installed_wheel_imports_one_namespace(installed: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util as u, exitflow, exitflow.pipeline.cli;"
        "print(exitflow.pipeline.cli.__file__);"
        "print([n for n in ('pipeline', 'scheduler', 'encoders', 'devices') if u.find_spec(n)])"
    )
    res = run_outside(installed, tmp_path, "-c", code)
    assert res.returncode == 0, res.stderr
    path, generic = res.stdout.strip().splitlines()
    assert path.startswith(str(installed)), path
    assert generic == "[]"


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_from_another_folder(installed: Path, tmp_path: Path) -> None:
    res = run_outside(installed, tmp_path, "-m", "exitflow.pipeline.cli", "--set", "bench.limit=50", "demo")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"model: bundle {installed / 'exitflow' / 'resources' / 'bundles' / 'avmnist'}" in res.stdout, res.stdout
    for system in ("full", "lf", "exitflow"):
        assert f"\n{system} " in "\n" + res.stdout or f"| {system} " in res.stdout, res.stdout
    assert (tmp_path / ".exitflow" / "runs" / "demo-bench.json").is_file()
