from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exitflow.pipeline.config import DEFAULT_CONFIG_PATH, dump_config, load_config
from exitflow.pipeline.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_config_loads_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert cfg.replay.system == "lf"
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert dump_config(again) == dump_config(cfg)


def test_all_errors_reported_at_once_with_dotted_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  seeed: 1\n  seed: abc\ntrain:\n  epochs: 0\nbogus: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    issues = info.value.issues
    assert any(i.startswith("data.seeed: unknown key") and "seed" in i for i in issues)
    assert any(i.startswith("data.seed: expected an integer, found 'abc'") for i in issues)
    assert any(i.startswith("train.epochs: expected a value >= 1, found 0") for i in issues)
    assert any(i.startswith("bogus: unknown key") for i in issues)
    assert len(issues) == 4


def test_literal_and_optional_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "data:\n  dataset: cifar\n  audio_snr_db: loud\n"))
    assert any("data.dataset: expected one of 'avmnist', 'avmnist-t'" in i for i in info.value.issues)
    assert any("data.audio_snr_db: expected a number or null" in i for i in info.value.issues)
    cfg = load_config(write(tmp_path, "data:\n  audio_snr_db: 10\n"))
    assert cfg.data.audio_snr_db == 10.0


def test_set_overrides_parse_like_yaml() -> None:
    cfg = load_config(None, ["replay.limit=7", "data.audio_snr_db=null", "train.lr=0.5"])
    assert cfg.replay.limit == 7 and cfg.data.audio_snr_db is None and cfg.train.lr == 0.5
    with pytest.raises(ConfigError) as info:
        load_config(None, ["replay.limit"])
    assert "expected KEY=VALUE" in info.value.issues[0]
    with pytest.raises(ConfigError) as info:
        load_config(None, ["replay.nope=1"])
    assert info.value.issues[0].startswith("replay.nope: unknown key")


def test_malformed_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: !!python/object/apply:os.system ['echo hacked']\n"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exitflow.pipeline.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_validate_reports_unknown_key_and_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "replay:\n  sytem: lf\n  limit: many\n")
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "replay.sytem: unknown key" in lines[0] or "replay.sytem: unknown key" in lines[1]
    assert any("replay.limit: expected an integer or null, found 'many'" in line for line in lines)
    ok = run_cli("config", "validate", str(DEFAULT_CONFIG_PATH))
    assert ok.returncode == 0 and ok.stdout.strip().endswith("ok")


def test_cli_show_applies_set_and_bad_config_is_one_clean_error(tmp_path: Path) -> None:
    shown = run_cli("--set", "replay.limit=3", "config", "show")
    assert shown.returncode == 0 and "limit: 3" in shown.stdout
    bad = run_cli("--config", str(write(tmp_path, "replay:\n  limit: -2\n")), "config", "show")
    assert bad.returncode == 2
    assert "replay.limit: expected a value >= 1, found -2" in bad.stderr
    assert "Traceback" not in bad.stderr
