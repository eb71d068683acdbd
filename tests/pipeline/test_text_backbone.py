"""An imported set's text on a pretrained backbone (``exitflow train cnn --text-backbone``): the bundled
MiniLM (a local folder, nothing downloaded) trains its exit heads inside the CNN family, calibrates, replays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exitflow.encoders.text import BUNDLED_MINILM, TextEarlyExitEncoder, bundled_minilm_path
from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.imported import ABSENT_TEXT, load_imported_split
from exitflow.pipeline.errors import ExitflowError
from exitflow.pipeline.inference.loading import load_encoders
from exitflow.pipeline.training.cnn_family import family_shape
from tests.pipeline.conftest import run_cli
from tests.pipeline.own_data import CLASS_NAMES, write_small_set


@pytest.fixture(scope="module")
def text_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_small_set(tmp_path_factory.mktemp("backbone") / "set", per_class=8, modalities=("audio", "text"))
    assert run_cli("data", "import", str(folder), "--quiet") == 0
    return folder


def test_text_backbone_trains_calibrates_and_replays(text_set: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    folder, name = text_set, str(text_set.resolve())
    assert run_cli("train", "cnn", "--dataset", str(folder), "--epochs", "1",
                   "--text-backbone", BUNDLED_MINILM) == 0
    model = folder / "model"
    assert json.loads((model / "preprocessing.json").read_text())["text_encoding"] == "string"
    trained = json.loads((model / "training.json").read_text())
    assert trained["settings"]["text_backbone"] == BUNDLED_MINILM
    # the backbone's exits feed the grid: a head per (audio exit, text exit)
    assert {"text0", "text2", "audio2_text0", "audio0_text2"} <= set(trained["accuracy"]["val"])
    # the stored heads only (the frozen backbone is named, not copied)
    config = json.loads((model / "text" / "config.json").read_text())
    assert config["kind"] == "text" and config["encoder_config"]["model"] == BUNDLED_MINILM

    test = load_imported_split(name, "test")  # the model reads strings now
    assert isinstance(test.text, list) and set(test.text) <= {ABSENT_TEXT, *CLASS_NAMES}
    assert [t == ABSENT_TEXT for t in test.text] == (~test.present["text"]).tolist()
    grid = load_imported_split(name, "test", text_strings=False)
    assert grid.text.shape[1:] == (1, 40, 40)

    encoders = load_encoders(load_config(None, []), name)
    assert isinstance(encoders["text"], TextEarlyExitEncoder) and encoders["text"].temperatures() != [1.0] * 3

    assert run_cli("calibrate", "--dataset", str(folder), "--energy-samples", "2") == 0
    profile = json.loads((model / "profile.json").read_text())
    assert set(profile["thresholds"]) == {"audio", "text", "fusion"}
    decisions = tmp_path / "decisions.jsonl"
    assert run_cli("replay", "--dataset", str(folder), "--decisions", str(decisions)) == 0
    lines = [json.loads(x) for x in decisions.read_text().splitlines()]
    assert len(lines) == len(test) and all(0 <= d["prediction"] < len(CLASS_NAMES) for d in lines)
    assert [("text" in d["missing"]) for d in lines] == (~test.present["text"]).tolist()

    bundle, ours = tmp_path / "bundle", tmp_path / "bundle.jsonl"  # the bundle carries the backbone
    assert run_cli("export", str(bundle), "--dataset", str(folder)) == 0
    assert (bundle / "text" / "backbone" / "config.json").is_file()
    assert json.loads((bundle / "preprocessing.json").read_text())["text_encoding"] == "string"
    assert run_cli("replay", "--bundle", str(bundle), "--decisions", str(ours)) == 0
    keys = ("prediction", "order", "exits", "skipped", "missing", "macs")
    b = [json.loads(x) for x in ours.read_text().splitlines()]
    assert [{k: d[k] for k in keys} for d in lines] == [{k: d[k] for k in keys} for d in b]
    # the bundle alone decides that text is read as strings: DIR/model gone, same decisions
    model.rename(folder / "model.away")
    try:
        alone = tmp_path / "alone.jsonl"
        assert run_cli("replay", "--bundle", str(bundle), "--decisions", str(alone)) == 0
        c = [json.loads(x) for x in alone.read_text().splitlines()]
        assert [{k: d[k] for k in keys} for d in c] == [{k: d[k] for k in keys} for d in b]
    finally:
        (folder / "model.away").rename(model)
    capsys.readouterr()


def test_a_local_backbone_folder_and_bad_names(text_set: Path, tmp_path: Path) -> None:
    name = str(text_set.resolve())
    shape = family_shape(name, 0.1, str(bundled_minilm_path()))  # a local BERT folder, by path
    config = shape.configs["text"]
    assert config.model == str(bundled_minilm_path()) and config.exit_layers == (2, 4, 6)
    with pytest.raises(ExitflowError, match="not a folder"):
        family_shape(name, 0.1, str(tmp_path / "nowhere"))
    with pytest.raises(ExitflowError, match="cannot read"):
        family_shape(name, 0.1, str(tmp_path))  # a folder without a model
    with pytest.raises(ExitflowError, match="needs an imported set with text"):
        family_shape("avmnist", 0.1, BUNDLED_MINILM)
