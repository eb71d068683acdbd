"""Your own data set: import a hand-written manifest, train, calibrate, bench and replay on it; bad manifests."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.imported import load_imported_split
from exitflow.pipeline.data.importer import ImportSettings, group_splits, import_dataset
from exitflow.pipeline.data.manifest import ManifestError, ManifestRow
from exitflow.pipeline.errors import DataError
from exitflow.pipeline.inference.loading import load_encoders
from tests.pipeline.conftest import run_cli
from tests.pipeline.own_data import CLASS_NAMES, write_small_set


def test_import_train_calibrate_bench_and_replay(own_trained_set: Path, tmp_path: Path, capsys) -> None:
    folder = own_trained_set
    name = str(folder.resolve())
    info = json.loads((folder / "cache" / "dataset.json").read_text())
    assert info["classes"] == sorted(CLASS_NAMES) and info["modalities"] == ["image", "audio"]
    assert sum(info["counts"].values()) == 36 and all(n > 0 for n in info["counts"].values())
    splits = {s: load_imported_split(name, s) for s in ("train", "val", "test")}
    groups = {s: set(sp.group.tolist()) for s, sp in splits.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not splits["train"].present["image"].all()  # every 5th row has no image
    # the model lives in the data set folder, with the classes and preprocessing it was trained with
    model = folder / "model"
    for part in ("image", "audio", "fusion"):
        assert (model / part / "model.safetensors").is_file()
    assert json.loads((model / "classes.json").read_text()) == info["classes"]
    assert (model / "profile.json").is_file()
    encoders = load_encoders(load_config(None, []), name)
    assert all(enc.config.num_classes == 3 for enc in encoders.values())

    rows_path = tmp_path / "bench.json"
    assert run_cli("bench", "--dataset", str(folder), "--json", str(rows_path)) == 0
    rows = {r["system"]: r for r in json.loads(rows_path.read_text())}
    assert set(rows) == {"full", "image", "audio", "static", "rexit", "exitflow"}
    n_test = info["counts"]["test"]
    assert all(r["n"] == n_test and 0.0 <= r["accuracy"] <= 1.0 for r in rows.values())
    assert rows["image"]["macs_per_sample"] < rows["full"]["macs_per_sample"]

    decisions = tmp_path / "decisions.jsonl"
    assert run_cli("replay", "--dataset", str(folder), "--decisions", str(decisions)) == 0
    lines = [json.loads(x) for x in decisions.read_text().splitlines()]
    assert len(lines) == n_test and {d["system"] for d in lines} == {"exitflow"}
    test = splits["test"]
    for d, has_image in zip(lines, test.present["image"].tolist(), strict=True):
        assert ("image" in d["missing"]) == (not has_image)
        assert d["label"] is not None and 0 <= d["prediction"] < 3
    capsys.readouterr()


def test_audio_and_typed_text(tmp_path: Path, capsys) -> None:
    """The text modality: strings become character grids, a character CNN trains, calibrates and replays."""
    folder = write_small_set(tmp_path / "set", modalities=("audio", "text"))
    assert run_cli("data", "import", str(folder), "--quiet") == 0
    test = load_imported_split(str(folder.resolve()), "test")
    assert test.text is not None and test.text.shape[1:] == (1, 40, 40)
    assert test.text_raw is not None and set(test.text_raw.tolist()) <= {"", *CLASS_NAMES}  # normalised
    assert run_cli("train", "cnn", "--dataset", str(folder), "--epochs", "1") == 0
    assert run_cli("calibrate", "--dataset", str(folder), "--energy-samples", "2") == 0
    decisions = tmp_path / "decisions.jsonl"
    assert run_cli("replay", "--dataset", str(folder), "--decisions", str(decisions)) == 0
    lines = [json.loads(x) for x in decisions.read_text().splitlines()]
    assert [("text" in d["missing"]) for d in lines] == (~test.present["text"]).tolist()
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("modalities", [("audio",), ("image", "audio", "text")], ids=["one", "three"])
def test_one_or_three_modalities_train_calibrate_replay_and_ship(
    modalities: tuple[str, ...], tmp_path: Path, capsys
) -> None:
    """A camera alone or camera + microphone + typed text: the family's grid and calibrated walk cover them,
    and the bundle replays like the model folder."""
    from exitflow.pipeline.inference.loading import load_fusion

    folder = write_small_set(tmp_path / "set", modalities=modalities)
    name = str(folder.resolve())
    assert run_cli("data", "import", str(folder), "--quiet") == 0
    assert run_cli("train", "cnn", "--dataset", str(folder), "--epochs", "1") == 0
    assert run_cli("calibrate", "--dataset", str(folder), "--energy-samples", "2") == 0
    fusion = load_fusion(load_config(None, []), name)
    assert fusion.modalities == list(modalities) and len(fusion.keys()) == (27 if len(modalities) == 3 else 0)
    trained = json.loads((folder / "model" / "training.json").read_text())
    if len(modalities) == 3:  # the walk's checks before the last modality fuse a pair, the third absent
        assert {"image2_audio0", "audio2_text1", "image0_text2"} <= set(trained["accuracy"]["val"])
    profile = json.loads((folder / "model" / "profile.json").read_text())
    assert set(profile["thresholds"]) == {*modalities, "fusion"}

    rows_path = tmp_path / "bench.json"
    assert run_cli("bench", "--dataset", str(folder), "--json", str(rows_path)) == 0
    rows = {r["system"]: r for r in json.loads(rows_path.read_text())}
    assert set(rows) == {"full", *modalities, "static", "rexit", "exitflow"}
    if len(modalities) == 1:  # nothing to fuse: full is the encoder's last exit, no head on top
        assert rows["full"]["macs_per_sample"] == rows["audio"]["macs_per_sample"]
        assert rows["full"]["accuracy"] == rows["audio"]["accuracy"]

    reference, ours = tmp_path / "model.jsonl", tmp_path / "bundle.jsonl"
    assert run_cli("replay", "--dataset", str(folder), "--decisions", str(reference)) == 0
    test = load_imported_split(name, "test")
    a = [json.loads(x) for x in reference.read_text().splitlines()]
    assert len(a) == len(test) and all(0 <= d["prediction"] < 3 and d["label"] is not None for d in a)
    for d, row in zip(a, range(len(test)), strict=True):
        absent = {m for m in modalities if not test.present[m][row]}
        assert set(d["missing"]) == absent and set(d["order"]) | set(d["skipped"]) | absent == set(modalities)
    bundle = tmp_path / "bundle"
    assert run_cli("export", str(bundle), "--dataset", str(folder)) == 0
    shutil.rmtree(folder / "model")  # the bundle alone must do
    assert run_cli("replay", "--bundle", str(bundle), "--decisions", str(ours)) == 0
    b = [json.loads(x) for x in ours.read_text().splitlines()]
    keys = ("prediction", "order", "exits", "skipped", "missing", "macs")
    assert [{k: d[k] for k in keys} for d in a] == [{k: d[k] for k in keys} for d in b]
    capsys.readouterr()


def test_group_splits_are_disjoint_and_deterministic() -> None:
    rows = [ManifestRow(i + 2, "a" if i % 2 else "b", {"audio": "x.wav"}, group=f"g{i % 7}") for i in range(70)]
    first = group_splits(rows, ImportSettings(seed=3))
    assert first == group_splits(rows, ImportSettings(seed=3))
    by_group: dict[str, set[str]] = {}
    for r, s in zip(rows, first, strict=True):
        by_group.setdefault(r.group, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    assert set(first) == {"train", "val", "test"}


# -- bad manifests: one line per problem, exit code non-zero, the cache untouched ---------------------
@pytest.fixture(scope="module")
def good_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_small_set(tmp_path_factory.mktemp("good") / "set")
    import_dataset(folder, progress=False)
    return folder


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _write(folder: Path, rows: list[dict[str, str]]) -> None:
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cache_state(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "cache").iterdir())}


def _missing_file(folder: Path) -> int:
    (folder / "wav" / "one_03.flac").unlink()
    return 2 + 12 + 3  # data line of one_03: header + 12 "zero" rows + index 3


def _corrupt_wav(folder: Path) -> int:
    (folder / "wav" / "zero_04.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
    return 2 + 4


def _corrupt_png(folder: Path) -> int:
    (folder / "img" / "two_01.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return 2 + 25


def _unknown_column(folder: Path) -> int:
    rows = _rows(folder)
    for r in rows:
        r["speaker"] = "theo"
    _write(folder, rows)
    return 0


def _empty_split(folder: Path) -> int:
    rows = _rows(folder)
    for i, r in enumerate(rows):
        r["split"] = "train" if i % 2 else "val"  # no test rows
    _write(folder, rows)
    return 0


def _label_only_in_test(folder: Path) -> int:
    rows = _rows(folder)
    for i, r in enumerate(rows):
        r["split"] = ("train", "val", "test")[i % 3]
    rows[2]["label"] = "seven"  # only this row (a test row) has the label
    _write(folder, rows)
    return 0


def _label_not_in_class_list(folder: Path) -> int:
    (folder / "classes.json").write_text(json.dumps(["zero", "one"]))
    return 0


def _empty_column(folder: Path) -> int:
    rows = _rows(folder)
    for r in rows:
        r["text"] = ""
    _write(folder, rows)
    return 0


BAD: dict[str, tuple[Callable[[Path], int], str, int]] = {
    "missing file": (_missing_file, "missing file", 1),
    "corrupt wav": (_corrupt_wav, "cannot decode it as audio", 1),
    "corrupt png": (_corrupt_png, "cannot decode it as an image", 1),
    "unknown column": (_unknown_column, "unknown column(s) 'speaker'", 1),
    "empty split": (_empty_split, "split 'test' is empty", 1),
    "label only in test": (_label_only_in_test, "label 'seven' has no train rows (seen only in test)", 1),
    "unknown label": (_label_not_in_class_list, "unknown label 'two' (not in classes.json)", 12),
    "empty column": (_empty_column, "column 'text' has no value in any row", 1),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_manifest_lists_every_problem_and_writes_nothing(case: str, good_set: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "set"
    shutil.copytree(good_set, folder)
    before = _cache_state(folder)
    breaker, message, count = BAD[case]
    line = breaker(folder)
    code = run_cli("data", "import", str(folder), "--quiet")
    err = capsys.readouterr().err
    assert code != 0
    problems = [x.strip() for x in err.splitlines() if x.startswith("  ")]
    hits = [p for p in problems if message in p]
    assert len(hits) == count, err
    assert len(problems) == count, err  # nothing else is wrong with the set
    if line:
        assert hits[0].startswith(f"line {line}:"), hits
    assert _cache_state(folder) == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".cache")]


def test_several_problems_are_all_reported(good_set: Path, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    shutil.copytree(good_set, folder)
    _missing_file(folder)
    _corrupt_wav(folder)
    with pytest.raises(ManifestError) as e:
        import_dataset(folder, progress=False)
    assert len(e.value.problems) == 2


def test_a_changed_manifest_needs_a_new_import(good_set: Path, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    shutil.copytree(good_set, folder)
    rows = _rows(folder)
    _write(folder, rows[:-1])
    with pytest.raises(DataError, match="changed since it was imported"):
        load_imported_split(str(folder.resolve()), "train")
    info = import_dataset(folder, progress=False)
    assert sum(info["counts"].values()) == 35
    assert np.isin(load_imported_split(str(folder.resolve()), "train").labels, [0, 1, 2]).all()


# -- labelled MCAP recordings -------------------------------------------------------------------------
def test_a_labelled_recording_becomes_rows_and_imports(tmp_path: Path, capsys) -> None:
    from exitflow.pipeline.data.preprocessing import Preprocessing
    from exitflow.pipeline.live.recording.reader import read_recording
    from exitflow.pipeline.live.recording.writer import RecordingWriter
    from exitflow.pipeline.messages import SensorMessage

    rec_path = tmp_path / "run.mcap"
    writer = RecordingWriter(rec_path, image_format="raw", flush_interval_s=0)
    base_ns, rng = 5_000_000_000, np.random.default_rng(0)
    chunks = []
    for k in range(30):  # 3 s: a frame, a 0.1 s audio chunk every 0.1 s; text at 0.3 s and 1.8 s
        t_ns = base_ns + k * 100_000_000
        writer.write_message(SensorMessage("image", "cam0", t_ns, np.full((24, 32), 8 * k, np.uint8), seq=k))
        chunk = (0.3 * np.sin(np.arange(800) * (0.05 + 0.01 * k)) + 0.01 * rng.standard_normal(800)).astype(np.float32)
        chunks.append(chunk)
        writer.write_message(SensorMessage("audio", "mic0", t_ns + 1, chunk, seq=k, sample_rate_hz=8000))
        if k in (3, 18):
            writer.write_message(SensorMessage("text", "kbd", t_ns + 2, f"Say {'A' if k == 3 else 'B'}", seq=k))
    writer.close()
    labels = rec_path.with_suffix(".labels.csv")
    labels.write_text("start_s,end_s,label,split\n0.0,0.5,a,train\n0.5,1.0,b,train\n1.0,1.5,a,val\n"
                      "1.5,2.0,b,val\n2.0,2.5,a,test\n2.5,3.0,b,test\n")
    folder = tmp_path / "set"
    assert run_cli("data", "from-mcap", str(rec_path), str(folder)) == 0
    rows = _rows(folder)
    assert [r["label"] for r in rows] == ["a", "b", "a", "b", "a", "b"] and {r["group"] for r in rows} == {"run"}
    assert rows[0]["text"] == "Say A" and rows[3]["text"] == "Say B" and rows[1]["text"] == ""
    assert run_cli("data", "import", str(folder), "--quiet") == 0
    train = load_imported_split(str(folder.resolve()), "train")
    pre = Preprocessing.from_dict(json.loads((folder / "cache" / "preprocessing.json").read_text()))
    # range 0: the chunks stamped in [0, 0.5 s) as the recording holds them (16-bit PCM), the frame closest to
    # 0.25 s (k = 2 or 3)
    recorded = [e.message.payload for e in read_recording(rec_path) if e.message and e.message.modality == "audio"]
    np.testing.assert_array_equal(train.inputs("audio")[0], pre.audio(np.concatenate(recorded[:5]), 8000))
    np.testing.assert_allclose(np.concatenate(recorded[:5]), np.concatenate(chunks[:5]), atol=1 / 32768)
    assert train.inputs("image")[0].shape == (1, 28, 28)
    assert int(round(float(train.inputs("image")[0].mean()) * 255)) in (16, 24)
    # a bad label file: every bad line reported, nothing written
    bad = tmp_path / "bad.csv"
    bad.write_text("start_s,end_s,label\n1.0,0.5,a\nx,2,b\n0,1,\n")
    before = (folder / "manifest.csv").read_text()
    assert run_cli("data", "from-mcap", str(rec_path), str(folder), "--labels", str(bad)) == 2
    err = capsys.readouterr().err
    assert "line 2:" in err and "line 3:" in err and "line 4: empty label" in err
    assert (folder / "manifest.csv").read_text() == before


def test_a_jsonl_manifest_imports_as_the_same_csv(good_set: Path, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    shutil.copytree(good_set, folder)
    rows = _rows(folder)
    (folder / "manifest.csv").unlink()
    (folder / "manifest.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if v}) + "\n" for r in rows))
    info = import_dataset(folder, progress=False)
    assert info["digests"] == json.loads((good_set / "cache" / "dataset.json").read_text())["digests"]
    (folder / "manifest.csv").write_text("label,audio\n")
    with pytest.raises(DataError, match="has 2 manifests"):
        import_dataset(folder, progress=False)


def test_the_set_preprocessing_shapes_the_cache_and_the_encoders(good_set: Path, tmp_path: Path) -> None:
    from exitflow.pipeline.training.cnn_family import CNNFamily, family_shape

    folder = tmp_path / "set"
    shutil.copytree(good_set, folder)
    (folder / "preprocessing.json").write_text(json.dumps({"image_side": 32, "image_mean": 0.1307, "image_std": 0.3081}))
    import_dataset(folder, progress=False)
    name = str(folder.resolve())
    train = load_imported_split(name, "train")
    assert train.inputs("image").shape[1:] == (1, 32, 32)
    assert train.inputs("image")[~train.present["image"]].max(initial=0.0) == 0.0  # absent rows stay zero
    shape = family_shape(name, dropout=0.0)
    assert shape.configs["image"].input_size == 32 and shape.num_classes == 3
    logits = CNNFamily(0.0, 16, shape)({m: torch.from_numpy(train.inputs(m)[:4]) for m in shape.modalities})
    assert all(v.shape == (4, 3) for v in logits.values())
    (folder / "preprocessing.json").write_text(json.dumps({"image_size": 32}))
    with pytest.raises(DataError, match="unknown field.*image_size"):
        import_dataset(folder, progress=False)
