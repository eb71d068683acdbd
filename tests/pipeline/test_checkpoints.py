"""Pipeline checkpoints: sha256 recorded on save and verified on load; damage is one CheckpointError line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from exitflow.encoders.checkpoint import CHECKSUM_KEY, file_sha256
from exitflow.pipeline.checkpoints import (
    CARD,
    META,
    WEIGHTS,
    load_weights,
    read_meta,
    save_checkpoint,
    stamp_checksums,
)
from exitflow.pipeline.config import REPO_ROOT
from exitflow.pipeline.errors import CheckpointError

REBUILD = "exitflow train baseline --name lf --dataset avmnist"


def _model(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))


def _saved(tmp_path: Path, model: torch.nn.Module | None = None) -> Path:
    folder = tmp_path / "baseline_lf_avmnist"
    return save_checkpoint(folder, model or _model(), {"kind": "test", "command": REBUILD}, "# card\n")


def _error(folder: Path, model: torch.nn.Module | None = None) -> str:
    with pytest.raises(CheckpointError) as info:
        load_weights(folder, model or _model())
    text = str(info.value)
    assert "\n" not in text, text
    return text


def _drop_checksum(folder: Path) -> None:
    meta = json.loads((folder / META).read_text())
    meta.pop(CHECKSUM_KEY)
    (folder / META).write_text(json.dumps(meta))


def test_save_records_sha256_in_meta_and_card(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    digest = file_sha256(folder / WEIGHTS)
    assert read_meta(folder)[CHECKSUM_KEY] == {WEIGHTS: digest}
    assert digest in (folder / CARD).read_text()
    loaded = load_weights(folder, _model(4))
    torch.testing.assert_close(loaded[0].weight, _model()[0].weight)


def test_changed_weights_fail_the_checksum(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    state = {k: v + 1 for k, v in _model().state_dict().items()}
    save_file(state, str(folder / WEIGHTS))  # a valid file, but not the one that was saved
    text = _error(folder)
    assert str(folder / WEIGHTS) in text and "sha256" in text and REBUILD in text


def test_truncated_nan_and_wrong_shape_are_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    _drop_checksum(folder)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[:40])
    assert "truncated" in _error(folder)

    nan = _model()
    with torch.no_grad():
        nan[0].weight.fill_(float("nan"))
    folder = _saved(tmp_path, nan)  # checksum matches: the values are the problem
    text = _error(folder)
    assert "NaN/inf" in text and "0.weight" in text and REBUILD in text

    folder = _saved(tmp_path, _model(8))
    text = _error(folder, _model(4))
    assert "has shape [8" in text and "expects [4" in text


@pytest.mark.parametrize("text", ["[]", "{oops", '{"weights_sha256": "abc"}', "\x00\x01"])
def test_invalid_meta_is_one_line(tmp_path: Path, text: str) -> None:
    folder = _saved(tmp_path)
    (folder / META).write_text(text)
    message = _error(folder)
    assert str(folder / META) in message and "exitflow train baseline" in message


def test_stamp_checksums_adds_verifies_and_detects_changes(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    _drop_checksum(folder)
    weights_before = (folder / WEIGHTS).read_bytes()
    assert stamp_checksums(folder) == "stamped"
    assert stamp_checksums(folder) == "ok"
    assert (folder / WEIGHTS).read_bytes() == weights_before
    save_file({k: v * 2 for k, v in _model().state_dict().items()}, str(folder / WEIGHTS))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        stamp_checksums(folder)


def test_committed_checkpoints_match_their_recorded_checksums() -> None:
    metas = sorted((REPO_ROOT / "checkpoints").rglob(META))
    stamped = 0
    for path in metas:
        sums = json.loads(path.read_text()).get(CHECKSUM_KEY)
        for name, digest in (sums or {}).items():
            assert file_sha256(path.parent / name) == digest, path
            stamped += 1
    assert stamped >= 1


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"kind": "baseline", "arch": {"hidden": "wide"}}, "arch.hidden"),
        ({"kind": "baseline", "arch": [1]}, "arch: expected an object"),
        ({"kind": "fusion_late", "dims": {"image": 10**9}, "num_classes": 10, "hidden_dim": 64}, "dims"),
        (
            {"kind": "fusion_transformer", "dims": {"image": 64}, "num_classes": 10, "fusion": {"dim": 0.5}},
            "fusion.dim",
        ),
    ],
)
def test_meta_read_by_loaders_is_checked(tmp_path: Path, meta: dict, needle: str) -> None:
    folder = tmp_path / "baseline_lf_avmnist"
    folder.mkdir()
    (folder / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        read_meta(folder)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_generic_rebuild_command_names_a_modality_the_cli_takes(tmp_path):
    """A checkpoint without a recorded command is rebuilt by ``exitflow train encoder --modality M``:
    M must be one the command accepts (it said ``vision``, which it refuses)."""
    from exitflow.encoders.checkpoint import rebuild_command
    from exitflow.pipeline.commands.encoder_cmd import ENCODER_MODALITIES

    for doc, folder in (({"modality": "image"}, ""), (None, tmp_path / "image_vit"), ({"modality": "audio"}, "")):
        modality = rebuild_command(doc, folder).split("--modality ")[1].split()[0]
        assert modality in ENCODER_MODALITIES, rebuild_command(doc, folder)
