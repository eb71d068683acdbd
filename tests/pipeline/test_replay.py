from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exitflow.pipeline.artifacts import baseline_folder
from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.evaluation.replay import replay
from exitflow.pipeline.inference.loading import load_baseline
from exitflow.pipeline.training.baseline import train_baseline
from tests.conftest import requires_shared


@requires_shared
@pytest.mark.slow
def test_train_tiny_baseline_then_replay(tmp_path: Path, data_cache: Path) -> None:
    cfg = load_config(None, [
        f"data.root={SHARED_DATA}", f"data.cache_dir={data_cache}", f"train.checkpoint_dir={tmp_path}",
        "train.epochs=1", "train.limit=256", "train.batch_size=64",
    ])
    result = train_baseline(cfg, "image", progress=False)
    assert result.folder == baseline_folder(cfg, "image") and (result.folder / "model.safetensors").is_file()
    card = (result.folder / "MODEL_CARD.md").read_text()
    assert f"{result.test_accuracy:.4f}" in card and f"{result.macs_per_sample:,}" in card
    model = load_baseline(cfg, "image")
    assert model.modalities == ("image",)
    out = tmp_path / "decisions.jsonl"
    summary = replay(cfg, "image", "avmnist", "test", 40, out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["n"] == 40 == len(rows)
    assert summary["accuracy"] == pytest.approx(sum(r["prediction"] == r["label"] for r in rows) / 40)
    assert summary["macs_per_sample"] == result.macs_per_sample
    assert all(r["latency_ms"]["total"] > 0 for r in rows)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exitflow.pipeline.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_errors_are_one_clean_line(tmp_path: Path) -> None:
    missing_root = run_cli("--data-root", str(tmp_path / "nope"), "replay", "--limit", "3")
    assert missing_root.returncode == 2
    assert "exitflow: error: data root" in missing_root.stderr and "Traceback" not in missing_root.stderr
    no_ckpt = run_cli("--set", f"train.checkpoint_dir={tmp_path}", "--set", "data.root=embedded",
                      "--set", f"data.cache_dir={tmp_path / 'c'}", "replay", "--limit", "3")
    assert no_ckpt.returncode == 2 and "train it first" in no_ckpt.stderr
    bad_system = run_cli("--set", "data.root=embedded", "--set", f"data.cache_dir={tmp_path / 'c'}",
                         "replay", "--system", "nope", "--limit", "3")
    assert bad_system.returncode == 2 and "unknown system 'nope'" in bad_system.stderr


def test_committed_lf_checkpoint_replays_embedded_slice(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.root=embedded", f"data.cache_dir={tmp_path}"])
    if not (baseline_folder(cfg, "lf") / "model.safetensors").is_file():
        pytest.skip("the lf checkpoint is not trained yet")
    meta = json.loads((baseline_folder(cfg, "lf") / "config.json").read_text())
    summary = replay(cfg, "lf", "avmnist", "test", 200, None, progress=False)
    assert summary["n"] == 200 and summary["macs_per_sample"] == meta["macs_per_sample"]
    assert summary["accuracy"] > 0.5  # far above the 0.1 of chance on real data
