"""The one preprocessing definition: defaults, serialisation, and offline (importer) == live tensors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import librosa
import numpy as np
import pytest
import soundfile as sf

from exitflow.pipeline.data.imported import load_imported_split
from exitflow.pipeline.data.importer import import_dataset
from exitflow.pipeline.data.preprocessing import Preprocessing, PreprocessingError
from exitflow.pipeline.data.spectrogram import spectrogram_112
from exitflow.pipeline.live.core.sync import AudioWindow
from exitflow.pipeline.live.runtime.preprocess import preprocess_sample
from exitflow.pipeline.messages import Sample


def _pcm(rate_hz: int, seconds: float = 0.6, seed: int = 0) -> np.ndarray:
    """A real-ish int16 clip: a chirp plus noise (deterministic)."""
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    x = 0.4 * librosa.chirp(fmin=200, fmax=3000, sr=rate_hz, duration=seconds)[: t.shape[0]]
    x += 0.05 * np.random.default_rng(seed).standard_normal(t.shape[0])
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def _frame(seed: int = 0) -> np.ndarray:
    """A 60x80 BGR uint8 frame with structure (a gradient and a disc) and noise."""
    rng = np.random.default_rng(seed)
    frame = np.zeros((60, 80, 3), dtype=np.uint8)
    frame[..., 0] = np.linspace(0, 255, 80, dtype=np.uint8)[None]
    cv2.circle(frame, (40, 30), 18, (30, 200, 90), -1)
    return np.clip(frame.astype(np.int16) + rng.integers(-20, 21, frame.shape), 0, 255).astype(np.uint8)


def test_defaults_reproduce_the_tensors_exitflow_always_used() -> None:
    pre = Preprocessing()
    frame = _frame()
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    expected = cv2.resize(gray, (28, 28), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    np.testing.assert_array_equal(pre.image(frame), expected[None])
    np.testing.assert_array_equal(pre.image(gray), expected[None])
    clip = _pcm(8000)
    np.testing.assert_array_equal(pre.audio(clip, 8000), spectrogram_112(clip, 8000)[None])
    assert pre.audio(clip, 8000).shape == (1, 112, 112)
    assert pre.text("  Bin BLUE  at ") == "  Bin BLUE  at "  # unchanged by default


def test_round_trip_and_clear_errors() -> None:
    pre = Preprocessing(image_side=32, image_mean=0.5, image_std=0.25, text_encoding="chars", text_max_chars=48,
                        text_normalize=True)
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    with pytest.raises(PreprocessingError, match="unknown field.*image_size"):
        Preprocessing.from_dict({"image_size": 32})
    with pytest.raises(PreprocessingError, match="version 99"):
        Preprocessing.from_dict({"version": 99})
    with pytest.raises(PreprocessingError, match="image_side must be a positive integer"):
        Preprocessing.from_dict({"image_side": 0})
    with pytest.raises(PreprocessingError, match="audio_rate_hz=16000 is not supported"):
        Preprocessing(audio_rate_hz=16000)
    with pytest.raises(PreprocessingError, match="text_encoding"):
        Preprocessing(text_encoding="bpe")
    with pytest.raises(PreprocessingError, match="mapping"):
        Preprocessing.from_dict(["image_side", 28])


def test_normalisation_and_character_grid() -> None:
    pre = Preprocessing(image_mean=0.5, image_std=0.25, text_encoding="chars", text_max_chars=40, text_normalize=True)
    frame = np.full((10, 10), 255, dtype=np.uint8)
    np.testing.assert_allclose(pre.image(frame), np.full((1, 28, 28), 2.0, dtype=np.float32))
    assert pre.text("  Turn   LEFT ") == "turn left"
    grid = pre.text_grid("Go!")  # "!" is outside the alphabet: the last column
    assert grid.shape == (1, 40, 40) and grid.sum() == 3.0
    assert grid[0, 0, 6] == 1.0 and grid[0, 1, 14] == 1.0 and grid[0, 2, 39] == 1.0
    assert not grid[0, 3:].any()


def test_offline_import_and_live_path_give_identical_tensors(tmp_path: Path) -> None:
    """The same raw frame, PCM clips at 8 kHz and 44.1 kHz and strings, through the importer (files on disk)
    and through the live ``preprocess_sample`` (in-memory payloads): identical tensors."""
    folder = tmp_path / "set"
    folder.mkdir()
    rates = {"train": 8000, "val": 44100, "test": 44100}
    texts = {"train": "Turn  LEFT", "val": "go to the Kitchen", "test": "stop!"}
    frames, clips, rows = {}, {}, []
    for k, split in enumerate(rates):
        frames[split], clips[split] = _frame(k), _pcm(rates[split], seed=k)
        cv2.imwrite(str(folder / f"{split}.png"), frames[split])
        sf.write(folder / f"{split}.wav", clips[split], rates[split], subtype="PCM_16")
        rows.append({"image": f"{split}.png", "audio": f"{split}.wav", "text": texts[split], "label": "a",
                     "split": split})
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    info = import_dataset(folder, progress=False)
    pre = Preprocessing.from_dict(info["preprocessing"])
    assert pre.text_encoding == "chars"
    for split in rates:
        offline = load_imported_split(str(folder.resolve()), split)
        live = preprocess_sample(Sample(sample_id=0, timestamp_ns=0, payloads={
            "image": frames[split],
            "audio": AudioWindow(clips[split].astype(np.float32) / 32768.0, rates[split]),
            "text": texts[split],
        }), preprocessing=pre)
        assert not live.missing
        for m in ("image", "audio", "text"):
            assert live.payloads[m].dtype == np.float32
            np.testing.assert_array_equal(offline.inputs(m)[0], live.payloads[m], err_msg=f"{split} {m}")
        assert offline.text_raw is not None and offline.text_raw[0] == pre.text(texts[split])
