"""Fixtures shared by the pipeline tests: a small imported data set, trained and calibrated; the
committed avmnist CNN family loaded once (``parts``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exitflow.pipeline.cli import main
from exitflow.pipeline.errors import CheckpointError
from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
from tests.pipeline.own_data import write_small_set


def run_cli(*argv: str) -> int:
    """``exitflow ARGV`` in-process; returns the exit code."""
    return main(list(argv))


@pytest.fixture(scope="session")
def own_trained_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class image + audio set (``tests/pipeline/own_data.py``) imported, trained for one epoch and
    calibrated with the CLI: ``DIR/cache`` and ``DIR/model`` (profile included). Returns ``DIR``."""
    folder = write_small_set(tmp_path_factory.mktemp("own") / "set")
    assert run_cli("data", "import", str(folder), "--quiet") == 0
    assert run_cli("train", "cnn", "--dataset", str(folder), "--epochs", "1") == 0
    assert run_cli("calibrate", "--dataset", str(folder), "--energy-samples", "2") == 0
    return folder


@pytest.fixture(scope="module")
def parts(embedded_cfg) -> AdaptiveParts:
    """The repo's default avmnist CNN family (encoders, grid fusion, profile), one thread."""
    try:
        loaded = AdaptiveParts(embedded_cfg, "avmnist")
    except CheckpointError as e:
        pytest.skip(f"no default CNN checkpoints: {e}")
    torch.set_num_threads(1)
    return loaded
