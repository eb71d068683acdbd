"""Shared fixtures: data roots and configs pointing caches into temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.roots import EMBEDDED_DATA, SHARED_DATA

requires_shared = pytest.mark.skipif(
    not (SHARED_DATA / "mnist" / "mnist_train.npz").is_file(), reason="needs ../shared/data beside the repo"
)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="session")
def embedded_cfg(data_cache: Path):
    """Config reading the embedded slice, caching built data in a session temp folder."""
    return load_config(None, [f"data.root={EMBEDDED_DATA}", f"data.cache_dir={data_cache}"])


@pytest.fixture(scope="session")
def shared_cfg(data_cache: Path):
    return load_config(None, [f"data.root={SHARED_DATA}", f"data.cache_dir={data_cache}"])
