"""Package layout for setuptools (metadata lives in pyproject.toml).

The four stage folders sit at the top of the repo and install under one namespace:
``pipeline/`` -> ``exitflow.pipeline``, ``encoders/`` -> ``exitflow.encoders``, and so on;
``exitflow/`` holds the small public API. Nothing generic is installed at the top level.

A wheel also carries the default ``config.yaml``, the committed ``checkpoints/`` and the demo's
model bundle ``bundles/`` as ``exitflow/resources/`` so ``exitflow demo`` works outside a checkout; an editable install
reads them from the checkout instead (``exitflow.pipeline.home``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
STAGES = ("devices", "encoders", "scheduler", "pipeline")
RESOURCES = ("config.yaml", "checkpoints", "bundles")


def packages() -> tuple[list[str], dict[str, str]]:
    names = ["exitflow"]
    package_dir = {"exitflow": "exitflow"}
    for stage in STAGES:
        package_dir[f"exitflow.{stage}"] = stage
        names.append(f"exitflow.{stage}")
        names += [f"exitflow.{stage}.{sub}" for sub in find_packages(stage)]
    return names, package_dir


class BuildWithResources(build_py):
    """Copy the default config and the committed checkpoints into the wheel."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "exitflow" / "resources"
        target.mkdir(parents=True, exist_ok=True)
        for name in RESOURCES:
            src = HERE / name
            dst = target / name
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, dst)


NAMES, PACKAGE_DIR = packages()
setup(packages=NAMES, package_dir=PACKAGE_DIR, cmdclass={"build_py": BuildWithResources})
