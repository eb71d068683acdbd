"""Resume files and encoder checkpoints refuse hostile or damaged input with one line.

A resume file is read with ``weights_only=True``: a pickle that would run code is refused
without running it. Encoder checkpoints verify the recorded sha256 and refuse truncated
files, NaN weights and a ``config.json`` of the wrong shape, naming the rebuild command.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from exitflow.encoders.checkpoint import CHECKSUM_KEY, CheckpointLoadError, load_encoder, save_encoder
from exitflow.encoders.lgvit_training import LabeledData, ResumeStateError, TrainSettings, train_vit

SETTINGS = TrainSettings(stage1_epochs=1, stage2_epochs=1, batch_size=8, progress=False, num_threads=0)


def _data(n: int = 16) -> LabeledData:
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = np.arange(n) % 5
    return LabeledData(lambda idx: x[torch.from_numpy(np.asarray(idx))], y)


def _one_line(error: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(error.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text


class _Payload:
    """Unpickling this would create a marker file (what a hostile resume file could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_hostile_pickle_resume_file_is_refused_without_running(tiny_vit, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with open(tmp_path / "stage1.pt", "wb") as f:
        pickle.dump({"model": _Payload(marker)}, f)
    with pytest.raises(ResumeStateError) as info:
        train_vit(tiny_vit, _data(), _data(), SETTINGS, run_dir=tmp_path, log=lambda s: None)
    _one_line(info, "stage1.pt", "--fresh")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "nan", "not_a_dict", "wrong_shape"])
def test_damaged_resume_files_are_one_line(tiny_vit, tmp_path: Path, damage: str) -> None:
    train_vit(tiny_vit, _data(), _data(), SETTINGS, run_dir=tmp_path, log=lambda s: None)
    path = tmp_path / "stage2.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        state = torch.load(path, weights_only=True)
        if damage == "nan":
            key = next(iter(state["model"]))
            state["model"][key] = torch.full_like(state["model"][key], float("nan"))
        elif damage == "not_a_dict":
            state = [1, 2, 3]
        else:
            key = next(k for k in state["model"] if k.startswith("heads."))
            state["model"][key] = torch.zeros(3, 3, 3)
        torch.save(state, path)
    with pytest.raises(ResumeStateError) as info:
        train_vit(tiny_vit, _data(), _data(), SETTINGS, run_dir=tmp_path, log=lambda s: None)
    _one_line(info, "stage2.pt")


# ---------------------------------------------------------------- encoder checkpoints
def _saved(tiny_vit, folder: Path) -> Path:
    save_encoder(tiny_vit, folder, {"command": "exitflow train encoder --modality vision --run-name t"})
    return folder


def test_save_records_sha256_and_load_verifies_it(tiny_vit, tmp_path: Path) -> None:
    folder = _saved(tiny_vit, tmp_path)
    doc = json.loads((folder / "config.json").read_text())
    assert len(doc[CHECKSUM_KEY]["model.safetensors"]) == 64
    load_encoder(folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in a weight: still a valid file
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointLoadError) as info:
        load_encoder(folder)
    _one_line(info, "model.safetensors", "sha256", "exitflow train encoder --modality vision --run-name t")


def _drop_checksum(folder: Path) -> None:
    doc = json.loads((folder / "config.json").read_text())
    doc.pop(CHECKSUM_KEY)
    (folder / "config.json").write_text(json.dumps(doc))


def test_truncated_and_nan_weights_are_refused(tiny_vit, tmp_path: Path) -> None:
    folder = _saved(tiny_vit, tmp_path / "a")
    _drop_checksum(folder)  # an older checkpoint: no checksum, the other checks still apply
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError) as info:
        load_encoder(folder)
    _one_line(info, "model.safetensors", "truncated", "exitflow train encoder")

    folder = _saved(tiny_vit, tmp_path / "b")
    _drop_checksum(folder)
    state = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointLoadError) as info:
        load_encoder(folder)
    _one_line(info, "NaN/inf", "model.safetensors")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["encoder_config"].update(hidden_size=32), "has shape"),
        (lambda d: d["encoder_config"].update(hidden_size=10**9), "encoder_config.hidden_size"),
        (lambda d: d["encoder_config"].update(num_layers="six"), "encoder_config.num_layers"),
        (lambda d: d["encoder_config"].update(bogus=1), "unknown key"),
        (lambda d: d.update(kind="resnet"), "kind"),
        (lambda d: d.update(exit_layers="all"), "exit_layers"),
        (lambda d: d.update({CHECKSUM_KEY: {"model.safetensors": 5}}), CHECKSUM_KEY),
        (lambda d: d["encoder_config"].update(patch_size=0), "does not build"),
    ],
)
def test_wrong_shaped_config_json_is_one_line(tiny_vit, tmp_path: Path, edit, needle: str) -> None:
    folder = _saved(tiny_vit, tmp_path)
    doc = json.loads((folder / "config.json").read_text())
    edit(doc)
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointLoadError) as info:
        load_encoder(folder)
    _one_line(info, needle, "exitflow train encoder")


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", "", '"x"'])
def test_invalid_config_json_is_one_line(tiny_vit, tmp_path: Path, text: str) -> None:
    folder = _saved(tiny_vit, tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(CheckpointLoadError) as info:
        load_encoder(folder)
    _one_line(info, "config.json", "exitflow train encoder")
